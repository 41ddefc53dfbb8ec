"""The dashboard on the tiny model: the sparse index against a dense encode, pages, search, try it, the oracle
console, steering, the live stream, escaping and path safety (FastAPI's TestClient, no browser)."""

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from metalens.capture import capture
from metalens.results import ResultsDB
from metalens.sae import Sae, SaeConfig, save_sae
from metalens.store import ActivationStore, capture_to_store

PLANT = "<script>alert('x')</script>"
SAE_ID = "resid.2/sae-topk-k8-w256:{}"


def texts() -> list[str]:
    out = []
    for i in range(36):
        if i % 4 == 0:
            out.append(f"The city of Paris is in France. {PLANT} {i}")
        elif i % 4 == 1:
            out.append(f"In May and June we went to Paris, number {i}.")
        else:
            out.append(f"Counting {i}, {i + 1}, {i + 2} apples in the kitchen.")
    return out


def build(root: Path, subject) -> dict:
    """A store (resid.2 + neurons.1, several shards), a TopK SAE on resid.2 and a results database."""
    root.mkdir(parents=True, exist_ok=True)
    store = capture_to_store(subject, texts(), ["resid.2", "neurons.1"], root / "store", texts_per_shard=10, progress=False)
    sae = Sae(SaeConfig(d_in=subject.d_model, width=256, k=8, site="resid.2", model=subject.name), seed=1)
    with torch.no_grad():
        sae.b_dec.copy_(store.mean("resid.2"))
    save_sae(sae, root / "sae")
    db = ResultsDB(root / "results.sqlite")
    db.add_explanation(None, SAE_ID.format(3), "the word <b>Paris</b> in geography", explainer="llm",
                       scores=[("simulation", "test", 0.61, {}), ("detection", "test", 0.8, {})])
    db.add_explanation(None, SAE_ID.format(3), "kitchen apples", explainer="control:other",
                       scores=[("simulation", "test", 0.05, {})])
    db.add_explanation(None, SAE_ID.format(7), "Paris", explainer="llm", scores=[("simulation", "test", 0.2, {})])
    with db.run("sae.train", {"width": 256}) as run:
        png = root / "plots" / "curve.png"
        png.parent.mkdir()
        png.write_bytes(PNG)
        (root / "plots" / "notes.txt").write_text("not a plot")
        run.outputs.update(curve=str(png), plots=str(png.parent), secret="/etc/passwd")
    db.close()
    return dict(root=root, store=root / "store", sae=root / "sae", db=root / "results.sqlite")


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture(scope="module")
def env(tiny, tmp_path_factory):
    from fastapi.testclient import TestClient

    from metalens.dashboard import create_app, loaders

    paths = build(tmp_path_factory.mktemp("dash"), tiny)
    _, oracle_loader = loaders("tiny", "default")
    app = create_app(paths["db"], [paths["store"]], [paths["sae"]], lambda: tiny, oracle_loader=oracle_loader)
    return dict(paths, client=TestClient(app), state=app.state.dash, subject=tiny)


def dense(env):
    """Every SAE latent on every stored row, the slow way."""
    from metalens.sae import load_sae

    acts = ActivationStore(env["store"]).load()
    return acts, load_sae(env["sae"]).encode(acts["resid.2"]).detach()  # [n_rows, 256]


def test_sparse_index_equals_dense_encode_and_is_cached(env):
    src = env["state"].source("sae0")
    acts, lat = dense(env)
    for i in range(0, 256, 17):
        v = src.values(i)
        want = lat[:, i].nonzero()[:, 0].numpy()
        assert np.array_equal(np.sort(v.rows), want), i
        assert np.allclose(v.values[np.argsort(v.rows)], lat[want, i].numpy(), atol=1e-5)
    assert np.allclose(src.summary().density, (lat > 0).float().mean(0).numpy())
    mtime = src.index_path.stat().st_mtime_ns
    from metalens.dashboard.sources import SaeSource

    again = SaeSource("x", ActivationStore(env["store"]), env["sae"])  # a fresh server finds the index on disk
    assert np.array_equal(again.values(5).rows, src.values(5).rows)
    assert src.index_path.stat().st_mtime_ns == mtime


def test_feature_page_top_windows_and_correlations(env):
    acts, lat = dense(env)
    i = int((lat > 0).sum(0).argmax())  # the densest latent
    card = env["client"].get(f"/api/feature/sae0/{i}").json()
    assert card["id"] == SAE_ID.format(i)
    assert card["frac_nonzero"] == pytest.approx(float((lat[:, i] > 0).float().mean()))
    top_values = lat[:, i].topk(len(card["top"])).values  # (ties broken either way)
    assert np.allclose([ex["value"] for ex in card["top"]], top_values.numpy(), atol=1e-4)
    assert np.allclose([ex["value"] for ex in card["top"]], [float(lat[ex["row"], i]) for ex in card["top"]], atol=1e-4)
    ex = card["top"][0]
    assert ex["tokens"][ex["target"]] == env["subject"].tokenizer.decode([int(acts.token_ids[ex["row"]])])
    assert ex["value"] == pytest.approx(float(lat[ex["row"], i]), abs=1e-3)
    assert len(card["pos_logits"]) == 10  # logit lens of the decoder row
    # correlated: Jaccard overlap of the rows where each fires, against a brute-force count
    src = env["state"].source("sae0")
    on = lat > 0
    co = (on[on[:, i]]).sum(0).float()
    jac = co / (on[:, i].sum() + on.sum(0) - co)
    jac[i] = 0
    got = src.correlated(i, 3)
    assert got[0][0] == int(jac.argmax()) and got[0][1] == pytest.approx(float(jac.max()))


def test_neuron_source_streams_the_store(env):
    acts = ActivationStore(env["store"]).load()
    src = env["state"].source("neurons0-1")
    v = src.values(5)
    assert np.allclose(v.values, acts["neurons.1"][:, 5].numpy())
    r = src.correlated(5, 1)[0]
    want = np.corrcoef(acts["neurons.1"].double().numpy().T)[5]
    want[5] = 0
    assert r[0] == int(np.abs(want).argmax()) and r[1] == pytest.approx(want[r[0]], abs=1e-6)
    page = env["client"].get("/feature/neurons0-1/5")
    assert page.status_code == 200 and "neurons.1:5" in page.text


def test_model_and_dataset_text_is_escaped(env):
    acts, lat = dense(env)
    planted = [r for r in range(len(acts)) if env["subject"].tokenizer.decode([int(acts.token_ids[r])]) == "<"]
    assert planted
    i = int(lat[planted].sum(0).argmax())  # a latent whose top windows include the planted text
    html = env["client"].get(f"/feature/sae0/{i}").text
    assert "&lt;" in html and "<script>alert" not in html
    html = env["client"].get("/feature/sae0/3").text
    assert "the word &lt;b&gt;Paris&lt;/b&gt; in geography" in html and "<b>Paris</b>" not in html
    assert "control (control:other)" in html and "0.610" in html
    html = env["client"].get("/try", params={"feature": "sae0:3", "text": PLANT}).text
    assert "<script>alert" not in html and "&lt;" in html


def test_no_path_escapes(env):
    c = env["client"]
    for url in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/runs/1/plot/../../../etc/passwd",
                "/feature/sae0/..%2f..%2fetc", "/runs/1/plot/-1", "/runs/1/plot/9"]:
        r = c.get(url)
        assert r.status_code in (400, 404, 422), url
        assert "root:" not in r.text and "import" not in r.text, url
    page = c.get("/runs/1").text
    plots = re.findall(r'/runs/1/plot/(\d+)', page)
    assert plots == ["0", "1"]  # curve.png listed, and again from its directory; notes.txt and /etc/passwd never
    r = c.get("/runs/1/plot/0")
    assert r.status_code == 200 and r.content == PNG and r.headers["content-type"] == "image/png"


def test_feature_index_sorts(env):
    c = env["client"]
    rows = re.findall(r'href="/feature/sae0/(\d+)"', c.get("/features", params={"source": "sae0", "sort": "score"}).text)
    assert rows[:2] == ["3", "7"]  # the explained latents, best score first
    dens = env["state"].source("sae0").summary().density
    rows = re.findall(r'href="/feature/sae0/(\d+)"', c.get("/features", params={"source": "sae0", "sort": "density"}).text)
    assert len(rows) == 100 and [dens[int(r)] for r in rows] == sorted(dens, reverse=True)[:100]
    assert "page 1 of 3" in c.get("/features", params={"source": "sae0"}).text


def test_search_by_text_and_by_token(env):
    c = env["client"]
    html = c.get("/search", params={"q": "paris geography"}).text
    assert html.index(SAE_ID.format(3)) < html.index(SAE_ID.format(7))  # both words beat one
    assert "kitchen apples" not in html  # controls are not search results
    acts, lat = dense(env)
    seq = env["subject"].tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    ids = acts.token_ids.tolist()
    rows = [r for r in range(len(ids)) if ids[r - len(seq) + 1 : r + 1] == seq and r >= len(seq) - 1
            and acts.text_idx[r - len(seq) + 1] == acts.text_idx[r]]
    best = int(lat[rows].mean(0).argmax())
    html = c.get("/search", params={"q": "' Paris'", "mode": "token"}).text
    first = re.search(r'href="/feature/(\w+-?\w*)/(\d+)"', html.split('id="results"')[1])
    assert first.groups()[0] in ("sae0", "neurons0-1")
    sae_first = re.search(r'href="/feature/sae0/(\d+)"', html.split('id="results"')[1]).group(1)
    assert int(sae_first) == best


def test_try_it_matches_a_direct_capture(env):
    text = "Paris in May"
    html = env["client"].get("/try", params={"feature": "sae0:3", "text": text}).text
    shown = [float(x) for x in re.findall(r'title="(-?[\d.]+)"', html.split('id="try-result"')[1])]
    from metalens.sae import load_sae

    acts = capture(env["subject"], [text], ["resid.2"])
    want = load_sae(env["sae"]).encode(acts["resid.2"])[:, 3].detach()
    assert np.allclose(shown, want.numpy(), atol=1e-3) and len(shown) == len(acts)
    bad = env["client"].get("/try", params={"feature": "nope:1", "text": "x"})
    assert bad.status_code == 400 and "no feature source" in bad.text


def test_oracle_console_matches_choice_probs_and_is_recorded(env):
    from metalens.oracle.tasks import Example

    r = env["client"].post("/oracle", content="context=The+city+of+Paris.&question=Is+it+true%3F&choices=Yes,No",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    shown = [float(x) for x in re.findall(r"P\(\w+\)</td><td>([\d.]+)", r.text)]
    o = env["state"].oracle()
    ex = [Example("The city of Paris.", "Is it true?", "", "all", ("Yes", "No"))]
    want = o.choice_probs(ex)[0].tolist() + o.choice_probs(ex, as_text=True)[0].tolist()
    assert np.allclose(shown, want, atol=1e-3)
    db = ResultsDB(env["db"])
    rows = [a for a in db.oracle_answers() if a["question"] == "Is it true?"]
    db.close()
    assert [a["task"] for a in rows] == ["dashboard", "dashboard/text-only"]
    assert rows[0]["probs"]["Yes"] == pytest.approx(want[0], abs=1e-6)


def test_steering_compares_and_records(env):
    from metalens.sae import load_sae
    from metalens.steer import clamp_feature

    body = "feature=sae0%3A3&mode=clamp&strength=40&prompt=Hello&max_new_tokens=6"
    r = env["client"].post("/steer", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    s = env["subject"]
    with clamp_feature(s, "resid.2", load_sae(env["sae"]), 3, 40.0):
        want = s.generate("Hello", max_new_tokens=6)
    db = ResultsDB(env["db"])
    run = db.runs("dashboard.steer")[-1]
    db.close()
    assert run["config"]["mode"] == "clamp" and run["config"]["strength"] == 40.0
    assert run["outputs"]["steered"] == want and run["outputs"]["plain"] == s.generate("Hello", max_new_tokens=6)
    bad = env["client"].post("/steer", content="feature=neurons0-1%3A2&mode=add&prompt=Hi",
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 400 and "no write direction" in bad.text


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_monitor_stream_readings_match_a_capture_of_the_text(env):
    r = env["client"].get("/api/monitor/stream", params={"prompt": "Hi", "job": "t1", "features": "sae0:3,neurons0-1:5>0",
                                                         "max_new_tokens": 6})
    ev = events(r.text)
    assert ev[0][0] == "start" and ev[-1][0] == "done"
    toks = [d for k, d in ev if k == "token"]
    assert len(toks) == ev[-1][1]["tokens"] and 1 <= len(toks) <= 6
    s = env["subject"]
    prompt = s.tokenizer(s.chat("Hi"), return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = s.model.generate(prompt, max_new_tokens=len(toks), do_sample=False, pad_token_id=s.tokenizer.pad_token_id)
    text = s.tokenizer.decode(ids[0])  # greedy: the same tokens the stream showed
    acts = capture(s, [text], ["neurons.1"], add_special_tokens=False)
    assert len(acts) == ids.shape[1] and [t["position"] for t in toks] == list(range(prompt.shape[1], ids.shape[1]))
    for t in toks:
        want = float(acts["neurons.1"][t["position"], 5])
        assert t["readings"]["neurons0-1:5"] == pytest.approx(want, abs=1e-4)
        assert ("neurons0-1:5" in t["flags"]) == (want > 0)


def test_cli_main_warns_on_public_host_and_names_a_bad_store(tmp_path, capsys):
    from metalens.dashboard import main

    rc = main(["--host", "0.0.0.0", "--db", str(tmp_path / "r.sqlite"), "--store", str(tmp_path / "nope"), "--model", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "warning: binding 0.0.0.0" in err and "nope" in err and "not an activation store" in err


def test_stop_button_ends_a_running_stream(env):
    state, got = env["state"], {}

    def listen():
        got["r"] = env["client"].get("/api/monitor/stream", params={"prompt": "Hi", "job": "j2", "max_new_tokens": 256})

    t = threading.Thread(target=listen)
    with state.model_lock:  # hold the model: the generation cannot start before Stop is pressed
        t.start()
        for _ in range(2000):
            if "j2" in state.jobs:
                break
            threading.Event().wait(0.005)
        assert env["client"].post("/api/monitor/stop", params={"job": "j2"}).json() == {"stopped": True}
    t.join(60)
    done = events(got["r"].text)[-1]
    assert done[0] == "done" and done[1]["stopped"] is True and done[1]["tokens"] == 0
    assert "j2" not in state.jobs


def test_probe_directions_are_features(env, tmp_path):
    from fastapi.testclient import TestClient

    from metalens.dashboard import create_app
    from metalens.intervene import add
    from metalens.probes import Probe, load_probe, save_probe

    g = torch.Generator().manual_seed(3)
    saved = Probe("resid.2", torch.randn(env["subject"].d_model, generator=g), -0.5, "diffmean", "mean", 1.0, "planted")
    probe = load_probe(save_probe(saved, tmp_path / "probe"))  # what --probe DIR does
    app = create_app(env["db"], [env["store"]], [env["sae"]], lambda: env["subject"], probes=[probe])
    c = TestClient(app)
    acts = ActivationStore(env["store"]).load()
    src = app.state.dash.source("probe0")
    assert np.allclose(src.values(0).values, (acts["resid.2"] @ probe.weight - 0.5).numpy(), atol=1e-4)
    page = c.get("/feature/probe0/0")
    assert page.status_code == 200 and "resid.2/dir:planted" in page.text and "Promotes" in page.text
    r = c.post("/steer", content="feature=probe0%3A0&mode=add&strength=3&prompt=Hello&max_new_tokens=5",
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    s = env["subject"]
    with add(s, "resid.2", probe.weight, scale=3.0):
        want = s.generate("Hello", max_new_tokens=5)
    db = ResultsDB(env["db"])
    assert db.runs("dashboard.steer")[-1]["outputs"]["steered"] == want
    db.close()
    ev = events(c.get("/api/monitor/stream", params={"prompt": "Hi", "job": "p", "max_new_tokens": 3}).text)
    assert ev[0][1] == {"readers": {"probe0:0": 1.0}}  # no readings named: every probe, at its own threshold
    clamp = c.post("/steer", content="feature=probe0%3A0&mode=clamp&prompt=Hi",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert clamp.status_code == 400 and "clamping needs an SAE latent" in clamp.text


def test_metalens_dashboard_command_is_registered(tmp_path):
    from typer.testing import CliRunner

    from metalens.cli import app

    r = CliRunner().invoke(app, ["dashboard", "--store", str(tmp_path / "missing"), "--model", "tiny",
                                 "--db", str(tmp_path / "r.sqlite")])
    assert r.exit_code == 2 and "not an activation store" in r.output


def test_cross_origin_posts_are_refused(env):
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = env["client"].post("/steer", content="feature=sae0%3A3&prompt=Hi", headers=form | {"origin": "http://evil.example"})
    assert r.status_code == 403
    r = env["client"].post("/api/monitor/stop", params={"job": "x"}, headers={"origin": "http://testserver"})
    assert r.status_code == 200


def test_oracle_answers_about_a_feature_show_on_its_page(env):
    body = f"feature={SAE_ID.format(3)}&context=Paris+in+May&question=Is+this+about+a+month%3F&choices=Yes,No"
    r = env["client"].post("/oracle", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    page = env["client"].get("/feature/sae0/3").text.split("<h2>Oracle</h2>")[1]
    assert page.count("Is this about a month?") == 2 and "text-only" in page
    assert "Is this about a month?" not in env["client"].get("/feature/sae0/7").text


@pytest.mark.integration
def test_real_model_stream_and_oracle(real, tmp_path):
    """The default model: the streamed tokens spell subject.generate's greedy text; the shipped oracle answers."""
    from fastapi.testclient import TestClient

    from metalens.dashboard import create_app, loaders

    store = capture_to_store(real, texts()[:8], ["resid.5"], tmp_path / "store", progress=False)
    sae = Sae(SaeConfig(d_in=real.d_model, width=512, k=16, site="resid.5"), seed=0)
    save_sae(sae, tmp_path / "sae")
    _, oracle_loader = loaders(None, "default")
    c = TestClient(create_app(tmp_path / "r.sqlite", [store.path], [tmp_path / "sae"], lambda: real,
                              oracle_loader=oracle_loader))
    ev = events(c.get("/api/monitor/stream", params={"prompt": "Name a city in France.", "job": "r",
                                                      "features": "sae0:1", "max_new_tokens": 12}).text)
    streamed = "".join(d["token"] for k, d in ev if k == "token")
    assert streamed.strip() == real.generate("Name a city in France.", max_new_tokens=12)
    r = c.post("/oracle", content="context=The+city+of+Paris+is+in+France.&question=Is+this+statement+true%3F",
               headers={"content-type": "application/x-www-form-urlencoded"})
    shown = [float(x) for x in re.findall(r"P\(\w+\)</td><td>([\d.]+)", r.text)]
    assert len(shown) == 4 and shown[0] + shown[1] == pytest.approx(1, abs=2e-3)
    i = int(c.app.state.dash.source("sae0").summary().density.argmax())
    card = c.get(f"/api/feature/sae0/{i}").json()
    assert card["top"]
    for ex in card["top"]:  # every window is a piece of its own text, decoded token by token
        assert "".join(ex["tokens"]) in texts()[ex["text"]]
