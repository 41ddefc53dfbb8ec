"""The live monitor on the tiny model: readings from the KV-cached decode step equal a separate capture."""

import threading

import pytest
import torch

from metalens import ResultsDB, capture
from metalens.monitor import TopLatents, latent_quantiles, quantile_rank, record, watch
from metalens.probes import Probe

PROMPT = "hello there, how are you"


def probe(site="resid.1", threshold=None, seed=0, name="p"):
    g = torch.Generator().manual_seed(seed)
    return Probe(site, torch.randn(64, generator=g), 0.1, "diffmean", "mean", threshold, name)


def latents(tiny, site="resid.2", k=3):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(64, 32, generator=g)
    enc = lambda a: torch.relu(a @ W)  # noqa: E731  [n, 32]
    ref = capture(tiny, ["some reference text for quantiles", "and another one"], site)[site]
    return TopLatents("sae", site, enc, latent_quantiles(enc, ref, q=20), k=k)


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def full_acts(tiny, ids, sites):
    text = tiny.tokenizer.decode(ids)
    acts = capture(tiny, [text], sites, add_special_tokens=False, max_length=None)
    assert acts.token_ids.tolist() == ids  # the byte tokenizer round-trips
    return acts


def test_readings_equal_a_separate_capture(tiny):
    p, lat = probe(), latents(tiny)
    out = list(watch(tiny, PROMPT, [p, lat], max_new_tokens=12))
    assert len(out) >= 4
    prompt_ids = tiny.tokenizer(tiny.chat(PROMPT), add_special_tokens=False)["input_ids"]
    gen = tiny.model.generate(torch.tensor([prompt_ids]), max_new_tokens=len(out), do_sample=False,
                              pad_token_id=tiny.tokenizer.pad_token_id)[0].tolist()
    ids = gen[: len(prompt_ids) + len(out)]
    assert "".join(r.token for r in out) == tiny.tokenizer.decode(ids[len(prompt_ids):])  # same greedy text as generate
    acts = full_acts(tiny, ids, ["resid.1", "resid.2"])
    for r in out:
        assert r.position >= len(prompt_ids)
        want = float(p(acts["resid.1"][r.position : r.position + 1])[0])
        assert r.readings["p"] == pytest.approx(want, abs=1e-4)
        z = lat(acts["resid.2"][r.position : r.position + 1])[0]
        top = z.topk(3)
        got = {k: v for k, v in r.readings.items() if k.startswith("sae:")}
        assert sorted(got.values(), reverse=True) == pytest.approx(top.values.tolist(), abs=1e-5)
    assert n_hooks(tiny.model) == 0


def test_quantile_rank_is_each_latents_own_scale():
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])  # [width 2, q 4]
    v = torch.tensor([[2.5, 25.0], [0.0, 45.0], [4.0, 5.0]])  # [n 3, width 2]
    assert quantile_rank(v, q).tolist() == [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]]


def test_abort_on_stops_at_the_flagged_token_and_on_flag_sees_it(tiny):
    free = [r.readings["p"] for r in watch(tiny, PROMPT, [probe()], max_new_tokens=12)]
    j = next(j for j in range(1, len(free)) if free[j] > max(free[:j]))
    thr = (max(free[:j]) + free[j]) / 2
    seen = []
    out = list(watch(tiny, PROMPT, [probe(threshold=thr)], max_new_tokens=12, abort_on=["p"], on_flag=seen.append))
    assert len(out) == j + 1 and out[-1].flags == ["p"] and all(not r.flags for r in out[:-1])
    assert seen == [out[-1]]
    # without abort_on the same threshold only flags
    assert len(list(watch(tiny, PROMPT, [probe(threshold=thr)], max_new_tokens=12))) == len(free)


def test_hooks_are_removed_after_an_exception_and_on_close(tiny):
    class Boom:
        name, site, threshold = "boom", "resid.0", None

        def __init__(self):
            self.calls = 0

        def __call__(self, acts):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("reader failed")
            return acts[:, 0]

    with pytest.raises(RuntimeError, match="reader failed"):
        list(watch(tiny, PROMPT, [Boom(), probe()], max_new_tokens=10))
    assert n_hooks(tiny.model) == 0
    it = watch(tiny, PROMPT, [probe()], max_new_tokens=10)
    next(it)
    assert n_hooks(tiny.model) == 1
    it.close()
    assert n_hooks(tiny.model) == 0


def test_stop_event_and_oracle_every_n(tiny):
    stop = threading.Event()
    out = []
    for r in watch(tiny, PROMPT, [probe()], max_new_tokens=12, stop=stop):
        out.append(r)
        if len(out) == 2:
            stop.set()
    assert len(out) == 2
    calls = []

    def oracle(ids):  # runs the same model: its forward passes must not leak into the readings
        calls.append(len(ids))
        tiny.model(torch.tensor([ids[:5]]))
        return {"oracle": float(len(ids))}

    out = list(watch(tiny, PROMPT, [probe()], max_new_tokens=9, oracle_fn=oracle, every=4))
    assert [i for i, r in enumerate(out) if "oracle" in r.readings] == [3, 7][: len(out) // 4]
    assert calls == [out[i].position + 1 for i in (3, 7)][: len(out) // 4]
    plain = list(watch(tiny, PROMPT, [probe()], max_new_tokens=9))
    assert [r.readings["p"] for r in plain] == [r.readings["p"] for r in out]


def test_record_writes_the_results_database(tiny, tmp_path):
    db = ResultsDB(tmp_path / "r.sqlite")
    out = list(watch(tiny, PROMPT, [probe(threshold=-1e9)], max_new_tokens=5))
    with db.run("monitor", {"prompt": PROMPT}) as run:
        record(db, run.id, out)
    rows = db.monitor_tokens(run.id)
    assert [r["position"] for r in rows] == [r.position for r in out]
    assert rows[0]["flags"] == ["p"] and rows[0]["readings"]["p"] == pytest.approx(out[0].readings["p"])


def test_cli_probe_train_eval_and_monitor_json(tiny, tmp_path):
    import json

    from typer.testing import CliRunner

    from metalens.cli import app

    d = tmp_path / "model"
    tiny.model.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    rows = [{"context": f"text number {i} " + "ab" * (i % 3), "read": "all", "question": "q",
             "answer": "Yes" if i % 2 else "No", "choices": ["Yes", "No"], "task": f"t{i % 2}"} for i in range(24)]
    data = tmp_path / "ex.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctrl = tmp_path / "ctrl.jsonl"
    ctrl.write_text("".join(json.dumps(r | {"answer": "No"}) + "\n" for r in rows))
    r = CliRunner()
    out = r.invoke(app, ["probe", "train", "--data", str(data), "--control", str(ctrl), "--out", str(tmp_path / "p"),
                         "--site", "resid.1", "--name", "x", "--model", str(d), "--json"])
    assert out.exit_code == 0, out.output
    ev = r.invoke(app, ["probe", "eval", str(tmp_path / "p"), "--data", str(data), "--model", str(d), "--json"])
    assert ev.exit_code == 0, ev.output
    report = json.loads(ev.output)
    assert set(report["tasks"]) == {"t0", "t1"} and report["overall"]["n"] == 24 and report["threshold"] is not None
    mon = r.invoke(app, ["monitor", "hi", "--probe", str(tmp_path / "p"), "--max-new-tokens", "4", "--model", str(d),
                         "--json"])
    assert mon.exit_code == 0, mon.output
    lines = [json.loads(x) for x in mon.output.splitlines() if x.startswith("{")]
    assert lines and set(lines[0]) == {"token", "position", "readings", "flags"} and "x" in lines[0]["readings"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"context": "a", "question": "q", "answer": "Yes"}\n')
    out = r.invoke(app, ["probe", "eval", str(tmp_path / "p"), "--data", str(bad), "--model", str(d)])
    assert out.exit_code == 2 and "bad.jsonl:2: a probe example needs 'choices'" in out.stderr, out.output
