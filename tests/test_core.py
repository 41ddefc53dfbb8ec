"""Core on a tiny random Llama: sites, capture, intervene, store, results, CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from metalens import ActivationStore, ResultsDB, add, capture, capture_to_store, clamp, ablate, replace, load_subject
from metalens.cli import app
from metalens.models import ModelError
from metalens.sites import SiteError, blocks
from metalens.store import StoreError

TEXTS = ["hello world", "a", "the quick brown fox jumps", "over the lazy dog.", "1 2 3 4 5 6 7"]


# ---- sites ----------------------------------------------------------------------------------
def test_sites_parse_and_errors(tiny):
    assert str(tiny.site("resid.3")) == "resid.3"
    assert str(tiny.site("neurons.-1")) == "neurons.3"
    with pytest.raises(SiteError, match=r"valid sites are resid.0..resid.3"):
        tiny.site("resid.4")
    with pytest.raises(SiteError, match="unknown site 'foo.1'"):
        tiny.site("foo.1")
    with pytest.raises(SiteError, match="expected '<kind>.<layer>'"):
        tiny.site("resid")
    assert tiny.width("neurons.0") == 128 and tiny.width("attn.0") == 64


# ---- capture --------------------------------------------------------------------------------
def test_capture_matches_hidden_states_and_excludes_padding(tiny):
    acts = capture(tiny, TEXTS, ["resid.0", "resid.2"], batch_size=2)
    lengths = [len(tiny.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(acts) == sum(lengths)
    assert acts["resid.2"].shape == (sum(lengths), 64)
    for i, text in enumerate(TEXTS):  # each text alone, no padding, through HF's own outputs
        enc = tiny.tokenizer(text, return_tensors="pt")
        hs = tiny.model(**enc, output_hidden_states=True).hidden_states  # (n_layers + 1) x [1, seq, d]
        rows = acts.text_idx == i
        assert acts.positions[rows].tolist() == list(range(lengths[i]))
        assert acts.token_ids[rows].tolist() == enc["input_ids"][0].tolist()
        torch.testing.assert_close(acts["resid.0"][rows], hs[1][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(acts["resid.2"][rows], hs[3][0], atol=1e-5, rtol=1e-4)


def test_capture_neurons_is_down_proj_input(tiny):
    acts = capture(tiny, TEXTS[:2], ["resid.0", "neurons.1"])
    # recompute block 1's MLP hidden from block 0's output by hand
    block = blocks(tiny.model)[1]
    seen = {}
    h = block.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    tiny.model(**tiny.tokenizer(TEXTS[0], return_tensors="pt"))
    h.remove()
    torch.testing.assert_close(acts["neurons.1"][acts.text_idx == 0], seen["x"][0])


def test_capture_positions_and_determinism(tiny):
    full = capture(tiny, TEXTS, ["resid.1"])
    last = capture(tiny, TEXTS, ["resid.1"], positions="last", batch_size=3)
    assert len(last) == len(TEXTS)
    for i in range(len(TEXTS)):
        torch.testing.assert_close(last["resid.1"][i], full["resid.1"][full.text_idx == i][-1], atol=1e-5, rtol=1e-4)
    sl = capture(tiny, TEXTS, ["resid.1"], positions=slice(1, 3))
    assert sl.positions.tolist() == [1, 2, 1, 2, 1, 2, 1, 2]  # "a" has only one token
    again = capture(tiny, TEXTS, ["resid.1"])
    assert torch.equal(full["resid.1"], again["resid.1"])


def test_capture_stops_after_deepest_layer(tiny):
    calls = []
    h = blocks(tiny.model)[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(tiny, TEXTS, ["resid.1", "mlp.2"])
        assert calls == []
        capture(tiny, TEXTS, ["resid.3"], batch_size=16)
        assert calls == [1]
    finally:
        h.remove()


def test_capture_rejects_a_bare_string(tiny):
    with pytest.raises(TypeError, match="list of strings"):
        capture(tiny, "hello", ["resid.0"])


# ---- intervene ------------------------------------------------------------------------------
def _logits(s, text="hello world"):
    return s.model(**s.tokenizer(text, return_tensors="pt")).logits


def _n_hooks(s):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in s.model.modules())


def test_add_changes_only_chosen_positions_and_is_removed(tiny):
    base = capture(tiny, ["hello world"], ["resid.1"])["resid.1"]
    v = torch.randn(64)
    n = _n_hooks(tiny)
    with add(tiny, "resid.1", v, scale=2.0, positions=slice(3, None)):
        assert _n_hooks(tiny) == n + 1
        edited = capture(tiny, ["hello world"], ["resid.1"])["resid.1"]
    assert _n_hooks(tiny) == n
    torch.testing.assert_close(edited[:3], base[:3])
    torch.testing.assert_close(edited[3:], base[3:] + 2.0 * v)
    torch.testing.assert_close(capture(tiny, ["hello world"], ["resid.1"])["resid.1"], base)


def test_hooks_removed_after_exception_and_nesting(tiny):
    n = _n_hooks(tiny)
    base = _logits(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with add(tiny, "resid.0", torch.ones(64)):
            with replace(tiny, "mlp.1", 0.0):
                assert _n_hooks(tiny) == n + 2
                raise RuntimeError("boom")
    assert _n_hooks(tiny) == n
    torch.testing.assert_close(_logits(tiny), base)
    u = torch.randn(64)
    with add(tiny, "resid.1", u, 3.0), add(tiny, "resid.1", u, -3.0):  # nested edits compose
        torch.testing.assert_close(_logits(tiny), base, atol=1e-4, rtol=1e-4)


def test_clamp_and_ablate_direction(tiny):
    u = torch.randn(64)
    unit = u / u.norm()
    with clamp(tiny, "resid.2", u, 5.0):
        a = capture(tiny, TEXTS, ["resid.2"])["resid.2"]
    torch.testing.assert_close(a @ unit, torch.full((len(a),), 5.0), atol=1e-4, rtol=1e-4)
    with ablate(tiny, "resid.2", direction=u):
        b = capture(tiny, TEXTS, ["resid.2"])["resid.2"]
    assert (b @ unit).abs().max() < 1e-4
    with ablate(tiny, "mlp.1"):
        c = capture(tiny, TEXTS, ["mlp.1"])["mlp.1"]
    assert c.abs().max() == 0
    with pytest.raises(ValueError, match="width 10 but site resid.2 has width 64"):
        add(tiny, "resid.2", torch.ones(10))


def test_int_positions_count_across_generation(tiny):
    """'from position p on' must hold during generate(), where each step is one token."""
    seen = []
    prompt = tiny.tokenizer("abcdef", return_tensors="pt")
    with add(tiny, "resid.0", torch.ones(64), positions=8):
        from metalens.sites import hook_site

        h = hook_site(tiny.model, tiny.site("resid.0"), lambda a: seen.append(a.clone()))
        try:
            tiny.model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)
        finally:
            h.remove()
    # prefill (6 tokens) untouched; steps at absolute positions 6, 7 untouched; 8 edited
    base_steps = []
    h = hook_site(tiny.model, tiny.site("resid.0"), lambda a: base_steps.append(a.clone()))
    try:
        tiny.model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)
    finally:
        h.remove()
    torch.testing.assert_close(seen[0], base_steps[0])
    torch.testing.assert_close(seen[1], base_steps[1])
    torch.testing.assert_close(seen[2], base_steps[2])
    assert not torch.allclose(seen[3], base_steps[3])


# ---- store ----------------------------------------------------------------------------------
def test_store_round_trip_stats_and_batches(tiny, tmp_path):
    texts = [f"text number {i} " * (1 + i % 3) for i in range(20)]
    store = capture_to_store(tiny, texts, ["resid.1", "neurons.2"], tmp_path / "s", texts_per_shard=6, progress=False)
    direct = capture(tiny, texts[:6], ["resid.1"])  # shard 0 is texts 0..5 in the same batches
    back = ActivationStore(tmp_path / "s").load()
    assert len(back) == len(store) == store.manifest.n_rows
    assert len(store.manifest.shards) == 4 and store.manifest.complete
    assert torch.equal(back["resid.1"][: len(direct)], direct["resid.1"])
    assert back.text_idx.unique().tolist() == list(range(20))
    torch.testing.assert_close(store.mean("resid.1"), back["resid.1"].mean(0), atol=1e-5, rtol=1e-5)
    assert abs(store.mean_norm("neurons.2") - back["neurons.2"].norm(dim=1).mean().item()) < 1e-3
    rows = torch.cat(list(store.batches("resid.1", 7, shuffle=True, seed=1, shard_buffer=2, drop_last=False)))
    assert rows.shape == back["resid.1"].shape
    assert not torch.equal(rows, back["resid.1"])  # shuffled...
    key = lambda t: sorted(map(tuple, t.round(decimals=4).tolist()))  # noqa: E731
    assert key(rows) == key(back["resid.1"])  # ...but every row exactly once
    assert all(len(b) == 7 for b in store.batches("resid.1", 7))


def test_store_half_precision(tiny, tmp_path):
    store = capture_to_store(tiny, TEXTS, "resid.1", tmp_path, dtype="bfloat16", progress=False)
    got = store.load()["resid.1"]
    want = capture(tiny, TEXTS, "resid.1")["resid.1"]
    torch.testing.assert_close(got, want.bfloat16().float())


def test_store_resume_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    texts = [f"resume me {i}" for i in range(12)]
    full = capture_to_store(tiny, texts, "resid.2", tmp_path / "full", texts_per_shard=4, progress=False).load()
    import metalens.store as st

    real_append, calls = ActivationStore.append, []

    def dying_append(self, acts, end):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed before the third shard lands
        calls.append(end)
        real_append(self, acts, end)

    monkeypatch.setattr(st.ActivationStore, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        capture_to_store(tiny, texts, "resid.2", tmp_path / "part", texts_per_shard=4, progress=False)
    monkeypatch.setattr(st.ActivationStore, "append", real_append)
    assert ActivationStore(tmp_path / "part").manifest.texts_done == 8
    resumed = capture_to_store(tiny, texts, "resid.2", tmp_path / "part", texts_per_shard=4, progress=False).load()
    assert torch.equal(resumed["resid.2"], full["resid.2"])
    assert torch.equal(resumed.text_idx, full.text_idx)
    with pytest.raises(StoreError, match="holds a different capture"):
        capture_to_store(tiny, texts[::-1], "resid.2", tmp_path / "part", progress=False)


def test_corrupt_shard_names_the_file(tiny, tmp_path):
    store = capture_to_store(tiny, TEXTS, "resid.1", tmp_path, texts_per_shard=2, progress=False)
    shard = tmp_path / store.manifest.shards[1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard_00001.safetensors is corrupt"):
        store.load()
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(StoreError, match=r"shard_00001.safetensors is corrupt or truncated: 100 bytes"):
        list(store.iter_shards("resid.1"))
    with pytest.raises(StoreError, match="site 'resid.3' is not in store"):
        store.mean("resid.3")


def test_store_refuses_nan(tiny, tmp_path):
    with replace(tiny, "resid.1", float("nan"), positions=slice(2, 3)):
        with pytest.raises(StoreError, match="non-finite activations at site resid.1, text 0, position 2"):
            capture_to_store(tiny, TEXTS, "resid.1", tmp_path, progress=False)


# ---- results --------------------------------------------------------------------------------
def test_results_db(tmp_path):
    db = ResultsDB(tmp_path / "r.sqlite")
    with db.run("unit", {"k": 1}) as run:
        run.outputs["x"] = "/tmp/x"
    with pytest.raises(ValueError):
        with db.run("unit", {"k": 2}):
            raise ValueError
    runs = db.runs("unit")
    assert [r["status"] for r in runs] == ["done", "failed"]
    assert runs[0]["config"] == {"k": 1} and runs[0]["outputs"] == {"x": "/tmp/x"} and runs[0]["ended"]
    eid = db.add_explanation(run.id, "neurons.1:5", "months", scores=[("simulation", "test", 0.5, {"n": 3})])
    db.add_score(eid, "detection", "test", 0.8)
    (e,) = db.explanations("neurons.1:5")
    assert {(s["metric"], s["value"]) for s in e["scores"]} == {("simulation", 0.5), ("detection", 0.8)}
    db.add_oracle_answer(run.id, "ctx", "q?", "Yes", {"Yes": 0.7, "No": 0.3})
    assert db.oracle_answers(run.id)[0]["probs"]["Yes"] == 0.7
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- models + CLI on a saved tiny model -----------------------------------------------------


def test_load_local_dir_and_errors(tiny, tiny_dir, tmp_path):
    s = load_subject(tiny_dir, device="cpu")
    assert (s.n_layers, s.d_model, s.dtype) == (4, 64, torch.float32)
    torch.testing.assert_close(_logits(s), _logits(tiny))
    assert s.fingerprint == tiny.fingerprint
    with pytest.raises(ModelError, match="does not exist"):
        load_subject(tmp_path / "nope")
    from transformers import T5Config

    T5Config().save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelError, match="not a causal language model"):
        load_subject(tmp_path / "t5")


def test_cli_info_capture_generate(tiny_dir, tmp_path):
    r = CliRunner()
    out = r.invoke(app, ["info", "--model", str(tiny_dir), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_layers"] == 4
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    args = ["capture", "--texts", str(tmp_path / "t.txt"), "--sites", "resid.1,mlp.2", "--out", str(tmp_path / "s"),
            "--model", str(tiny_dir), "--json"]
    out = r.invoke(app, args)
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["texts"] == len(TEXTS) and res["sites"] == ["resid.1", "mlp.2"]
    assert res["rows"] == len(ActivationStore(tmp_path / "s"))
    bad = r.invoke(app, [*args[:4], "resid.9", *args[5:]])
    assert bad.exit_code != 0 and "resid.0..resid.3" in bad.output
    out = r.invoke(app, ["generate", "hi", "--model", str(tiny_dir), "--max-new-tokens", "3", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["prompt"] == "hi"


def test_corpora_from_local_hugging_face_datasets(tmp_path):
    """--texts accepts a saved dataset directory, parquet, JSON lines with another column; streamed, in order."""
    import datasets

    from metalens.errors import DataError
    from metalens.io import iter_texts, read_texts

    rows = {"body": [f"text number {i}" for i in range(50)], "n": list(range(50))}
    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "t.parquet"))
    (tmp_path / "t.jsonl").write_text("".join(f'{{"body": "{t}"}}\n' for t in rows["body"]))
    for src in ("saved", "t.parquet", "t.jsonl"):
        assert read_texts(tmp_path / src, column="body") == rows["body"], src
    assert list(iter_texts(tmp_path / "t.parquet", column="body", limit=3)) == rows["body"][:3]
    with pytest.raises(DataError, match="no column 'text'.*body"):
        read_texts(tmp_path / "saved")
    with pytest.raises(DataError, match="column 'n' is int"):
        read_texts(tmp_path / "t.parquet", column="n")
