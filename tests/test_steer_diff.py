import pytest
import torch

from metalens.capture import capture
from metalens.sae import Sae, SaeConfig
from metalens.steer import clamp_feature, compare, contrastive_vector, steer

PAIRS = [("I love it, wonderful!", "I hate it, awful!"), ("What a great day", "What a terrible day"),
         ("so happy and glad", "so sad and upset")]


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_contrastive_vector_mean_and_pca(tiny):
    mean = contrastive_vector(tiny, "resid.2", PAIRS, method="mean")
    pos = capture(tiny, [p for p, _ in PAIRS], "resid.2", positions="last")["resid.2"]
    neg = capture(tiny, [n for _, n in PAIRS], "resid.2", positions="last")["resid.2"]
    assert torch.allclose(mean.vector, (pos - neg).mean(0), atol=1e-5)
    pca = contrastive_vector(tiny, "resid.2", PAIRS, method="pca", reduce="mean")
    assert pca.vector.shape == (tiny.d_model,) and pca.n_pairs == 3 and pca.method == "pca"
    with pytest.raises(ValueError, match="method"):
        contrastive_vector(tiny, "resid.2", PAIRS, method="lda")


def test_steering_changes_generation_and_is_removed(tiny):
    vec = contrastive_vector(tiny, "resid.1", PAIRS)
    before = n_hooks(tiny.model)
    plain = tiny.generate("Tell me a story", max_new_tokens=12)
    rows = compare(tiny, ["Tell me a story"], lambda: steer(tiny, vec, multiplier=40.0, start=0), max_new_tokens=12)
    assert rows[0]["plain"] == plain and rows[0]["steered"] != plain
    assert n_hooks(tiny.model) == before
    assert tiny.generate("Tell me a story", max_new_tokens=12) == plain
    # from a late position on: the prompt's forward pass is untouched, so the first new token can only
    # change through positions >= start
    with steer(tiny, vec, multiplier=40.0, start=10_000):
        assert tiny.generate("Tell me a story", max_new_tokens=12) == plain


def test_clamp_feature_keeps_error_term(tiny):
    d = tiny.d_model
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=d, width=4 * d, k=8))
    prompt = "Tell me a story"
    plain = tiny.generate(prompt, max_new_tokens=10)
    before = n_hooks(tiny.model)
    # clamping a latent to 0 where it is (almost always) inactive changes nothing: the error term restores x
    x = capture(tiny, [tiny.chat(prompt)], "resid.1", add_special_tokens=False)["resid.1"]
    never = int((sae.encode(x) > 0).sum(0).argmin())
    with clamp_feature(tiny, "resid.1", sae, never, 0.0):
        same = tiny.generate(prompt, max_new_tokens=10)
    assert same == plain
    with clamp_feature(tiny, "resid.1", sae, never, 200.0):
        steered = tiny.generate(prompt, max_new_tokens=10)
    assert steered != plain
    assert n_hooks(tiny.model) == before
    with pytest.raises(IndexError, match="out of range"):
        with clamp_feature(tiny, "resid.1", sae, 10**6, 1.0):
            tiny.generate(prompt, max_new_tokens=2)
    assert n_hooks(tiny.model) == before
