"""Faults: bad input, corrupt files, hangs and kills each end in a named error (or the right answer),
never a silent wrong number. Fast: everything runs on the tiny random Llama."""

import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metalens.capture import capture
from metalens.cli import app
from metalens.errors import DataError, MetalensError
from metalens.models import ModelError, load_subject, resolve_device
from metalens.oracle.ask import Oracle
from metalens.oracle.inject import read_vectors
from metalens.oracle.tasks import Example, OracleDataError, load_jsonl
from metalens.results import ResultsDB
from metalens.sae.io import load_sae, save_sae
from metalens.sae.model import Sae, SaeConfig
from metalens.sae.train import SaeTrainConfig, train_sae
from metalens.store import MANIFEST, ActivationStore, StoreError, capture_to_store

TEXTS = ["The cat sat on the mat.", "Dogs bark at night.", "Paris is in France.", "One two three four five."]




def cli(*args):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def assert_clean_error(code, err, *needles):
    """Exit 2, no traceback, naming each needle; a metalens error is one line on stderr."""
    assert code == 2, err
    assert "Traceback" not in err
    if err.startswith("error:"):
        assert len(err.strip().splitlines()) == 1, err
    flat = " ".join(err.replace("│", " ").split())  # click usage errors come in a box
    for n in needles:
        assert n in flat, (n, flat)


def make_sae(site: str, d_in: int = 64, width: int = 32, k: int = 4) -> Sae:
    return Sae(SaeConfig(d_in=d_in, width=width, k=k, site=site, model="tiny"), seed=0)


def nan_bytes_at(shard: Path, key: str, row: int, d: int) -> None:
    """Overwrite row `row` of tensor `key` (float32 [rows, d]) with NaN in place: same size, new content."""
    raw = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    start = 8 + n + json.loads(raw[8 : 8 + n])[key]["data_offsets"][0] + row * d * 4
    raw[start : start + 4 * d] = struct.pack("<f", float("nan")) * d
    shard.write_bytes(bytes(raw))


# ================================================================ 1. SAE / store / site pairings
def test_sae_pages_refuses_an_sae_whose_site_is_not_in_the_store(tiny, tiny_dir, tmp_path):
    capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False)
    save_sae(make_sae("resid.2"), tmp_path / "sae")
    code, out, err = cli("sae", "pages", tmp_path / "sae", "--store", tmp_path / "s", "--out", tmp_path / "p",
                         "--model", tiny_dir, "--device", "cpu", "--latents", "0-1")
    assert_clean_error(code, err, "resid.2", "resid.1")
    assert not (tmp_path / "p" / "index.html").exists()


def test_sae_eval_train_steer_explain_refuse_mismatched_sites(tiny, tiny_dir, tmp_path):
    capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False)
    save_sae(make_sae("resid.2"), tmp_path / "sae")
    common = ["--model", tiny_dir, "--device", "cpu"]
    code, _, err = cli("sae", "eval", tmp_path / "sae", "--store", tmp_path / "s", *common)
    assert_clean_error(code, err, "resid.2", "resid.1")
    code, _, err = cli("sae", "eval", tmp_path / "sae", "--site", "resid.1", *common)
    assert_clean_error(code, err, "--site resid.1", "resid.2")
    code, _, err = cli("sae", "train", "--store", tmp_path / "s", "--site", "resid.3", "--width", 16, "--k", 2,
                       "--steps", 1, "--batch-size", 8, "--out", tmp_path / "t", *common)
    assert_clean_error(code, err, "resid.3", "resid.1")
    code, _, err = cli("steer", "hello", "--sae", tmp_path / "sae", "--site", "resid.1", "--latent", 0, *common)
    assert_clean_error(code, err, "--site resid.1", "resid.2")
    save_sae(make_sae("resid.1", d_in=32), tmp_path / "narrow")  # same site name, another model's width
    code, _, err = cli("sae", "pages", tmp_path / "narrow", "--store", tmp_path / "s", "--out", tmp_path / "p", *common)
    assert_clean_error(code, err, "width 32", "width 64")
    code, _, err = cli("explain", "--store", tmp_path / "s", "--features", "neurons.1:3", *common)
    assert_clean_error(code, err, "neurons.1", "resid.1")
    code, _, err = cli("explain", "--store", tmp_path / "s", "--features", "resid.1:64", *common)
    assert_clean_error(code, err, "index 64 is out of range", "0..63")


def test_clamp_feature_refuses_another_site(tiny):
    from metalens.steer import clamp_feature

    with pytest.raises(DataError, match="reads resid.2 but clamping was asked at resid.1"):
        with clamp_feature(tiny, "resid.1", make_sae("resid.2"), 0, 1.0):
            pass


# ================================================================ 2. oracle contexts are read whole
def test_read_last_reads_the_last_token_of_a_long_context(tiny):
    ctx = "abcdefghij" * 60  # 600 byte tokens: more than the 512 the reader used to cut to
    cfg = tiny.model.config
    old = cfg.max_position_embeddings
    cfg.max_position_embeddings = 1024
    try:
        [v] = read_vectors(tiny, [Example(ctx, "q", read="last")], [2])
    finally:
        cfg.max_position_embeddings = old
    whole = capture(tiny, [ctx], ["resid.2"], max_length=None, add_special_tokens=False)
    assert len(whole) == 600
    torch.testing.assert_close(v[0], whole["resid.2"][-1])
    # above the model's limit: refused, naming the length, the limit and how to change it
    with pytest.raises(OracleDataError, match=r"600 tokens, more than the 512 .*max_tokens="):
        read_vectors(tiny, [Example(ctx, "q", read="last")], [2])
    with pytest.raises(OracleDataError, match="empty"):
        read_vectors(tiny, [Example("", "q")], [2])


# ================================================================ 4. corrupt and non-finite data
def test_same_size_corrupt_shard_is_refused_by_eval_explain_and_pages(tiny, tiny_dir, tmp_path):
    from metalens.autointerp.examples import feature_sequences
    from metalens.features import Feature
    from metalens.sae.metrics import reconstruction_metrics

    store = capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", texts_per_shard=2, progress=False)
    sae = make_sae("resid.1")
    save_sae(sae, tmp_path / "sae")
    shard = tmp_path / "s" / store.manifest.shards[1]["file"]
    size = shard.stat().st_size
    nan_bytes_at(shard, "resid.1", 1, 64)
    assert shard.stat().st_size == size
    st = ActivationStore(tmp_path / "s")
    with pytest.raises(StoreError, match="shard_00001.safetensors is corrupt.*--repair"):
        reconstruction_metrics(sae, st, "resid.1")
    with pytest.raises(StoreError, match="shard_00001.safetensors is corrupt"):
        feature_sequences(st, Feature.neuron("resid.1", 0), tiny.tokenizer)
    code, _, err = cli("sae", "eval", tmp_path / "sae", "--store", tmp_path / "s", "--model", tiny_dir, "--device", "cpu",
                       "--json")
    assert_clean_error(code, err, "shard_00001.safetensors is corrupt")
    code, _, err = cli("sae", "pages", tmp_path / "sae", "--store", tmp_path / "s", "--out", tmp_path / "p",
                       "--model", tiny_dir, "--device", "cpu")
    assert_clean_error(code, err, "shard_00001.safetensors is corrupt")


def test_verification_is_cached_and_notices_a_later_change(tiny, tmp_path):
    store = capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", texts_per_shard=2, progress=False)
    shard = tmp_path / "s" / store.manifest.shards[0]["file"]
    past = time.time() - 60  # older than the mtime granularity guard
    for e in store.manifest.shards:
        os.utime(tmp_path / "s" / e["file"], (past, past))
    st = ActivationStore(tmp_path / "s")
    st.verify()
    cache = json.loads((tmp_path / "s" / "verified.json").read_text())["shards"]
    assert sorted(cache) == [e["file"] for e in store.manifest.shards]
    assert all(v[0] == e["sha256"] for v, e in zip(cache.values(), store.manifest.shards))
    nan_bytes_at(shard, "resid.1", 0, 64)  # same size, new mtime: hashed again
    with pytest.raises(StoreError, match="shard_00000.safetensors is corrupt"):
        ActivationStore(tmp_path / "s").read_shard(0, ["resid.1"])


def test_non_finite_rows_are_refused_naming_shard_row_and_text(tiny, tmp_path):
    capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", texts_per_shard=2, progress=False)
    m = json.loads((tmp_path / "s" / MANIFEST).read_text())
    shard = tmp_path / "s" / m["shards"][1]["file"]
    nan_bytes_at(shard, "resid.1", 3, 64)
    import hashlib

    m["shards"][1]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()  # a "valid" store holding NaN
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(m))
    st = ActivationStore(tmp_path / "s")
    text = int(st.read_shard(1, ["text_idx"])["text_idx"][3])
    with pytest.raises(StoreError, match=rf"shard_00001.safetensors: non-finite .* resid.1, row 3 of the shard .* text {text}"):
        st.load()
    with pytest.raises(StoreError, match="non-finite"):
        train_sae(SaeTrainConfig(out=str(tmp_path / "sae"), site="resid.1", k=2, width=8, batch_size=4, steps=2), st,
                  progress=False)
    assert not (tmp_path / "sae" / "sae_weights.safetensors").exists()


def test_sae_train_refuses_nan_rows():
    x = torch.randn(64, 16)
    x[37, 3] = float("nan")
    with pytest.raises(DataError, match="row 37"):
        train_sae(SaeTrainConfig(out="/nonexistent/never-written", k=2, width=8, batch_size=8, steps=2), x, progress=False)


def test_store_append_refuses_nan_activations(tiny, tmp_path):
    acts = capture(tiny, TEXTS[:1], ["resid.1"])
    acts.acts["resid.1"][2, 5] = float("inf")
    from metalens.store import Manifest

    st = ActivationStore.create(tmp_path / "s", Manifest("tiny", "f", ["resid.1"], {"resid.1": 64}, "float32", "t",
                                                         "h", 1, 128, "all"))
    with pytest.raises(StoreError, match="non-finite activations at site resid.1, text 0, position 2"):
        st.append(acts, 1)


# ================================================================ 5. config that does not fit its weights
def test_model_dir_with_one_layer_too_many_is_an_error(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"does not fit its weights: 9 tensors missing .*model.layers.4"):
        load_subject(tmp_path, device="cpu")
    code, _, err = cli("info", "--model", tmp_path, "--device", "cpu")
    assert_clean_error(code, err, "does not fit its weights")
    cfg["num_hidden_layers"] -= 2  # one too few: the last layer's weights are unexpected
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="not in the model the config describes"):
        load_subject(tmp_path, device="cpu")
    cfg["num_hidden_layers"] += 1
    cfg["hidden_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not fit|cannot load the weights"):
        load_subject(tmp_path, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_unavailable_device_names_the_available_ones(tiny_dir):
    with pytest.raises(ModelError, match=r"device 'cuda' is not available here; available: auto, cpu"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    code, _, err = cli("info", "--model", tiny_dir, "--device", "cuda")
    assert_clean_error(code, err, "'cuda' is not available")


# ================================================================ oracle: choices, layers, answers
@pytest.fixture(scope="module")
def plain_oracle(tiny):
    """The tiny subject as an oracle without an adapter (the untrained-oracle baseline)."""
    return Oracle(tiny, None, {"layers": [1], "inject_layer": 1, "inject": "add", "scale": 1.0, "system": None})


def test_oracle_refuses_one_choice_and_normalises_negative_layers(plain_oracle):
    with pytest.raises(OracleDataError, match="at least two"):
        plain_oracle.ask("The cat sat.", "Is it a cat?", choices=["Yes"], max_new_tokens=1)
    with pytest.raises(OracleDataError, match="empty"):
        plain_oracle.ask("", "Is it a cat?", max_new_tokens=1)
    last = plain_oracle.ask("The cat sat.", "Cat?", layer=-1, choices=["Yes", "No"], max_new_tokens=2)
    three = plain_oracle.ask("The cat sat.", "Cat?", layer=3, choices=["Yes", "No"], max_new_tokens=2)
    assert last.layer == 3 and last.probs == three.probs and last.text == three.text
    ex = [Example("The cat sat.", "Cat?", "Yes", "last", ("Yes", "No"))]
    torch.testing.assert_close(plain_oracle.choice_probs(ex, [-1]), plain_oracle.choice_probs(ex, [3]))
    from metalens.sites import SiteError

    with pytest.raises(SiteError, match="resid.0..resid.3"):
        plain_oracle.ask("The cat sat.", "Cat?", layer=-9, max_new_tokens=1)


def test_eval_item_whose_answer_is_not_a_choice_is_an_error(plain_oracle):
    from metalens.oracle.evaluate import evaluate

    exs = [Example("The cat sat.", "Cat?", "Yes", "last", ("Yes", "No")),
           Example("The dog ran.", "Cat?", "Maybe", "last", ("Yes", "No"))]
    with pytest.raises(OracleDataError, match=r"answer 'Maybe' is not one of its choices"):
        evaluate(plain_oracle, exs, [])


def test_cli_ask_refuses_one_choice_and_an_empty_context():
    code, _, err = cli("ask", "The cat sat.", "Is it a cat?", "--choices", "Yes")
    assert_clean_error(code, err, "--choices needs at least two")
    code, _, err = cli("ask", "", "Is it a cat?")
    assert_clean_error(code, err, "context is empty")


def test_oracle_jsonl_bad_rows_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"context": "a", "question": "q"}\n\n{"context": "", "question": "q"}\n')
    with pytest.raises(OracleDataError, match=r"x.jsonl:3: 'context' is empty"):
        load_jsonl(p)
    p.write_text('{"context": 5, "question": "q"}\n')
    with pytest.raises(OracleDataError, match=r"x.jsonl:1: 'context' must be"):
        load_jsonl(p)


# ================================================================ numeric options: CLI and library
@pytest.mark.parametrize("opt,value", [("--texts-per-shard", 0), ("--texts-per-shard", -3), ("--batch-size", 0),
                                       ("--max-length", 0), ("--limit", -1)])
def test_capture_numeric_options_are_checked(tiny_dir, tmp_path, opt, value):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    code, _, err = cli("capture", "--texts", tmp_path / "t.txt", "--sites", "resid.1", "--out", tmp_path / "s",
                       "--model", tiny_dir, "--device", "cpu", opt, value)
    assert_clean_error(code, err, opt, str(value))
    assert not (tmp_path / "s").exists()


def test_capture_library_checks_its_arguments(tiny, tmp_path):
    for kw, match in [(dict(texts_per_shard=0), "texts_per_shard must be an integer >= 1, got 0"),
                      (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
                      (dict(max_length=0), "max_length must be an integer >= 1"),
                      (dict(dtype="int8"), "dtype must be one of"),
                      (dict(positions="middle"), "positions must be")]:
        with pytest.raises(DataError, match=match):
            capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False, **kw)
    with pytest.raises(DataError, match="all empty"):
        capture_to_store(tiny, ["", ""], ["resid.1"], tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="max_length must be"):
        capture(tiny, TEXTS, ["resid.1"], max_length=0)
    assert not (tmp_path / "s").exists()


def test_sae_train_steps_zero_and_k_out_of_range_are_refused(tiny, tiny_dir, tmp_path):
    capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False)
    base = ["sae", "train", "--store", tmp_path / "s", "--site", "resid.1", "--out", tmp_path / "o",
            "--model", tiny_dir, "--device", "cpu"]
    code, _, err = cli(*base, "--steps", 0, "--width", 16, "--k", 2)
    assert_clean_error(code, err, "--steps must be >= 1, got 0")
    code, _, err = cli(*base, "--steps", 1, "--width", 16, "--k", 17)
    assert_clean_error(code, err, "--k must be in 1..width (16), got 17")
    assert not (tmp_path / "o" / "sae_weights.safetensors").exists()
    with pytest.raises(DataError, match="steps must be an integer >= 1, got 0"):
        train_sae(SaeTrainConfig(out=str(tmp_path / "o"), steps=0), torch.randn(8, 4), progress=False)


# ================================================================ texts: empty, blank lines, bad encodings
def test_empty_texts_file_is_an_error_not_an_empty_store(tiny_dir, tmp_path):
    for body in ["", "\n  \n\n"]:
        (tmp_path / "t.txt").write_text(body)
        code, _, err = cli("capture", "--texts", tmp_path / "t.txt", "--sites", "resid.1", "--out", tmp_path / "s",
                           "--model", tiny_dir, "--device", "cpu")
        assert_clean_error(code, err, "hold no text")
        assert not (tmp_path / "s").exists()


def test_blank_lines_keep_line_numbers_in_the_store(tiny_dir, tmp_path):
    (tmp_path / "t.txt").write_text("alpha beta\n\n   \ngamma delta\n")
    code, out, err = cli("capture", "--texts", tmp_path / "t.txt", "--sites", "resid.1", "--out", tmp_path / "s",
                         "--model", tiny_dir, "--device", "cpu", "--json")
    assert code == 0, err
    st = ActivationStore(tmp_path / "s")
    acts = st.load()
    assert sorted(set(acts.text_idx.tolist())) == [0, 3]  # text_idx + 1 = line of the file
    assert (acts.text_idx == 3).sum() == len("gamma delta")  # byte tokens of line 4
    assert st.manifest.n_texts == 4 and json.loads(out)["texts"] == 4
    (tmp_path / "t.jsonl").write_text('{"text": "alpha"}\n\n{"text": ""}\n{"text": "gamma"}\n')
    code, out, err = cli("capture", "--texts", tmp_path / "t.jsonl", "--sites", "resid.1", "--out", tmp_path / "j",
                         "--model", tiny_dir, "--device", "cpu", "--json")
    assert code == 0, err
    assert sorted(set(ActivationStore(tmp_path / "j").load().text_idx.tolist())) == [0, 3]


def test_texts_files_with_bad_rows_name_file_and_line(tiny_dir, tmp_path):
    from metalens.io import read_texts

    (tmp_path / "t.txt").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"t.txt:3: not UTF-8"):
        read_texts(tmp_path / "t.txt")
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"text": 5}\n')
    code, _, err = cli("capture", "--texts", tmp_path / "t.jsonl", "--sites", "resid.1", "--out", tmp_path / "s",
                       "--model", tiny_dir, "--device", "cpu")
    assert_clean_error(code, err, "t.jsonl:2: expected a string in field 'text', got int")
    (tmp_path / "u.txt").write_text("one\u2028still one\x0cand still\r\ntwo\n")  # only \n ends a line
    assert read_texts(tmp_path / "u.txt") == ["one\u2028still one\x0cand still", "two"]


def test_empty_text_in_a_batch_is_skipped_not_a_crash(tiny):
    acts = capture(tiny, ["", "ab", ""], ["resid.1"])
    assert acts.text_idx.tolist() == [1, 1]
    assert len(capture(tiny, ["", ""], ["resid.1"])) == 0


def test_steer_pairs_with_a_missing_field_name_file_and_line(tiny_dir, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"pos": "I love it", "neg": "I hate it"}\n{"pos": "good"}\n')
    code, _, err = cli("steer", "hello", "--pairs", tmp_path / "p.jsonl", "--model", tiny_dir, "--device", "cpu",
                       "--max-new-tokens", 2)
    assert_clean_error(code, err, "p.jsonl:2:", "neg")


def test_manifest_with_wrong_field_types_is_a_store_error(tiny, tmp_path):
    capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False)
    good = json.loads((tmp_path / "s" / MANIFEST).read_text())
    for key, value in [("n_rows", "12"), ("sites", "resid.1"), ("shards", {}), ("widths", {"resid.1": "64"}),
                       ("dtype", "int4"), ("shards", [{"file": "../../etc/passwd"}])]:
        (tmp_path / "s" / MANIFEST).write_text(json.dumps({**good, key: value}))
        with pytest.raises(StoreError, match="not a valid manifest"):
            ActivationStore(tmp_path / "s")
    (tmp_path / "s" / MANIFEST).write_text("[1, 2]")
    with pytest.raises(StoreError, match="expected a JSON object"):
        ActivationStore(tmp_path / "s")


# ================================================================ truncated shards: rerun says how; --repair repairs
def test_truncated_shard_rerun_points_to_repair_and_repair_recaptures(tiny, tiny_dir, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS * 2))
    args = ["capture", "--texts", tmp_path / "t.txt", "--sites", "resid.1", "--out", tmp_path / "s",
            "--model", tiny_dir, "--device", "cpu", "--texts-per-shard", 2, "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    reference = ActivationStore(tmp_path / "s").load()
    shard = tmp_path / "s" / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    code, _, err = cli(*args)
    assert_clean_error(code, err, "shard_00001.safetensors is corrupt or truncated", "--repair")
    code, out, err = cli(*args, "--repair")
    assert code == 0, err
    st = ActivationStore(tmp_path / "s")
    assert len(st.manifest.shards) == 4 and st.manifest.texts_done == 8
    fixed = st.load()
    torch.testing.assert_close(fixed["resid.1"], reference["resid.1"])
    assert torch.equal(fixed.text_idx, reference.text_idx)


# ================================================================ endpoint that never answers
class Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_endpoint_that_never_answers_fails_within_timeout_times_attempts(tiny, tiny_dir, tmp_path):
    from metalens.autointerp.llm import EndpointLLM, LLMError

    srv = Silent()
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=2, backoff=0.0, timeout=0.4)
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="failed after 3 attempts; last error: timed out after 0.4s"):
            llm.generate([[{"role": "user", "content": "x"}]])
        assert time.monotonic() - t0 < 0.4 * 3 + 1.0  # not 60 s x 5
        capture_to_store(tiny, TEXTS, ["neurons.1"], tmp_path / "s", progress=False)
        t0 = time.monotonic()
        code, _, err = cli("explain", "--store", tmp_path / "s", "--features", "neurons.1:0", "--k", 1,
                           "--endpoint", srv.url, "--timeout", 0.5, "--retries", 1, "--model", tiny_dir,
                           "--device", "cpu", "--window", 8, "--no-control", "--out", tmp_path / "run")
        # 2 attempts x 0.5 s + one backoff (<= 0.63 s) + loading the tiny model
        assert time.monotonic() - t0 < 0.5 * 2 + 0.7 + 15
        assert_clean_error(code, err, "failed after 2 attempts", "timed out after 0.5s")
    finally:
        srv.close()


# ================================================================ output: strict JSON, readable errors, permissions
def test_json_output_turns_nan_into_null():
    import typer

    from metalens.cli.common import JsonOpt, Output, command

    sub = typer.Typer()

    @command(sub, "nanny", record=False)
    def nanny(as_json: bool = JsonOpt):
        return Output({"fvu": float("nan"), "xs": [1.0, float("inf")], "ok": 0.5})

    @sub.callback()
    def root():
        pass

    r = CliRunner().invoke(sub, ["nanny", "--json"])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    assert json.loads(r.stdout) == {"fvu": None, "xs": [1.0, None], "ok": 0.5}


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    from metalens.cli import common

    code, out, err = cli("explain", "--store", tmp_path / "nope", "--features", "resid.1:0")
    assert_clean_error(code, err, "is not an activation store")
    env = {**os.environ, "METALENS_DEBUG": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "metalens", "explain", "--store", str(tmp_path / "nope"), "--features",
                        "resid.1:0"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "StoreError" in r.stderr
    assert common.DEBUG["on"] is False


def test_written_files_get_normal_permissions(tiny, tmp_path):
    from metalens.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        capture_to_store(tiny, TEXTS[:1], ["resid.1"], tmp_path / "s", progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    for f in (tmp_path / "s").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


# ================================================================ results database: killed runs
KILLED_RUN = """
import os, signal, sys
from metalens.results import ResultsDB
db = ResultsDB(sys.argv[1])
run = db.start_run("capture", {"x": 1})
print(run.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_run_is_marked_interrupted_on_next_open(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "r.sqlite")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == -signal.SIGKILL
    run_id = int(r.stdout.split()[0])
    db = ResultsDB(tmp_path / "r.sqlite")
    [row] = [x for x in db.runs() if x["id"] == run_id]
    assert row["status"] == "interrupted" and row["pid"] and row["host"]
    live = db.start_run("capture", {})
    assert ResultsDB(tmp_path / "r.sqlite").runs()[-1]["status"] == "running"  # our own process is alive
    db.end_run(live)


def test_old_results_database_is_migrated(tmp_path):
    con = sqlite3.connect(tmp_path / "old.sqlite")
    con.executescript("""CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
        config TEXT NOT NULL, code_version TEXT NOT NULL, started REAL NOT NULL, ended REAL, status TEXT NOT NULL,
        outputs TEXT NOT NULL DEFAULT '{}');
        INSERT INTO runs(kind, config, code_version, started, status) VALUES ('capture', '{}', '0', 1.0, 'done');""")
    con.commit()
    con.close()
    db = ResultsDB(tmp_path / "old.sqlite")
    assert db.runs()[0]["status"] == "done" and "pid" in db.runs()[0]
    with db.run("sae.train", {}):
        pass
    assert db.runs()[-1]["pid"] == os.getpid()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(MetalensError, match="not a usable results database"):
        ResultsDB(tmp_path / "junk.sqlite")


# ================================================================ SAE files
def test_malformed_sae_directories_are_data_errors(tmp_path):
    save_sae(make_sae("resid.1"), tmp_path / "ok")
    assert load_sae(tmp_path / "ok").cfg.site == "resid.1"
    cfg = json.loads((tmp_path / "ok" / "cfg.json").read_text())
    for change, match in [({"d_in": "64"}, "'d_in' must be a positive integer"), ({"d_sae": 33}, "W_enc is"),
                          ({"architecture": "gated"}, "not supported"), ({"k": 0}, "'k' must be")]:
        (tmp_path / "ok" / "cfg.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(DataError, match=match):
            load_sae(tmp_path / "ok")
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "ok" / "sae_weights.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(DataError, match="cannot be read as safetensors"):
        load_sae(tmp_path / "ok")
    with pytest.raises(DataError, match="not an SAE directory"):
        load_sae(tmp_path / "missing")


def test_unwritable_output_and_non_finite_scales_are_one_line_errors(tiny_dir, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    (tmp_path / "file").write_text("not a directory")
    code, _, err = cli("capture", "--texts", tmp_path / "t.txt", "--sites", "resid.1", "--out", tmp_path / "file" / "s",
                       "--model", tiny_dir, "--device", "cpu")
    assert_clean_error(code, err, "Not a directory")
    for opt in ("--multiplier", "--value"):
        code, _, err = cli("steer", "hello", "--pos", "a", "--neg", "b", opt, "nan", "--model", tiny_dir)
        assert_clean_error(code, err, f"{opt} must be a finite number, got nan")
    code, _, err = cli("sae", "train", "--lr", "nan", "--steps", 1)
    assert_clean_error(code, err, "--lr must be >= 0, got nan")


@pytest.mark.integration
def test_cli_ask_negative_layer_reads_the_last_layer():
    """`metalens ask --layer -1` on the shipped oracle: the same answer as the last layer's index."""
    args = ["ask", "The cat sat on the mat.", "Is this about an animal?", "--choices", "Yes,No", "--max-new-tokens", 1,
            "--device", "cpu", "--json"]
    code, out, err = cli(*args, "--layer", -1)
    assert code == 0, err
    neg = json.loads(out)
    code, out, err = cli(*args, "--layer", 29)
    assert code == 0, err
    assert neg["layer"] == 29 and neg["probs"] == json.loads(out)["probs"]


def test_store_batches_check_their_sizes(tiny, tmp_path):
    st = capture_to_store(tiny, TEXTS, ["resid.1"], tmp_path / "s", progress=False)
    for kw in (dict(batch_size=0), dict(batch_size=4, shard_buffer=0)):
        with pytest.raises(DataError, match="must be an integer >= 1, got 0"):
            next(st.batches("resid.1", **kw))
    assert sum(len(b) for b in st.batches("resid.1", 4, drop_last=False)) == len(st)
