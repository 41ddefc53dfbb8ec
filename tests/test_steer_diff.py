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
    rows = compare(tiny, ["Tell me a story"], lambda: steer(tiny, vec, multiplier=40.0, positions=0), max_new_tokens=12)
    assert rows[0]["plain"] == plain and rows[0]["steered"] != plain
    assert n_hooks(tiny.model) == before
    assert tiny.generate("Tell me a story", max_new_tokens=12) == plain
    # from a late position on: the prompt's forward pass is untouched, so the first new token can only
    # change through positions >= start
    with steer(tiny, vec, multiplier=40.0, positions=10_000):
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


def planted_pair(tiny):
    """B = A plus one shared vector on the embeddings of the vowels: a new B-only feature that fires
    on five different tokens (each of which both models also represent in their own way)."""
    import copy

    from metalens.models import subject_from

    model = copy.deepcopy(tiny.model)
    vowels = tiny.tokenizer.convert_tokens_to_ids(list("aeiou"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        v = torch.nn.functional.normalize(torch.randn(emb.shape[1], generator=g), dim=0)
        emb[vowels] += 2.0 * emb.norm(dim=1).mean() * v
    return subject_from(model, tiny.tokenizer, name="tiny-planted"), vowels


def test_crosscoder_finds_planted_difference(tiny):
    import random

    from metalens.diff import CrosscoderConfig, diff_report, paired_acts, train_crosscoder

    b, vowels = planted_pair(tiny)
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz   ") for _ in range(60)) for _ in range(120)]
    cfg = CrosscoderConfig(site="resid.1", width=128, k=4, batch_size=512, steps=300, lr=3e-3)
    x, index = paired_acts(tiny, b, texts, "resid.1")  # what diff_models does, keeping the pairs
    cc = train_crosscoder(cfg, x, progress=False)
    report = diff_report(cc, x, index, tiny, b, "resid.1")
    top = report.b_side[0]  # the most model-B-sided live latent
    fires = cc.encode(x * cc.scales[None, :, None])[:, top["latent"]] > 0  # [n]
    is_vowel = torch.isin(index.token_ids, torch.tensor(vowels))
    assert is_vowel[fires].float().mean() > 0.9 and fires[is_vowel].float().mean() > 0.9  # it is the planted feature
    planted = (x[:, 1] - x[:, 0])[is_vowel].mean(0)
    d_a, d_b = cc.W_dec[top["latent"]].detach()
    cos = torch.nn.functional.cosine_similarity
    assert cos(d_b, planted, dim=0) > 0.5 and abs(cos(d_a, planted, dim=0)) < 0.3
    r = torch.tensor(report.rel_norm)
    assert top["rel_norm"] > 0.9  # B only (without the norm penalty it stayed at r ~ 0.64)
    assert report.counts["b_only"] + report.counts["a_only"] <= 3  # and not many spurious one-sided latents
    assert report.counts["shared"] > len(r) // 2
    assert all(c[-3] in "aeiou" for c in top["contexts"]), top["contexts"]
