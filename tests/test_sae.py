import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from metalens.sae import Sae, SaeConfig, SaeTrainConfig, load_sae, save_sae, train_sae
from metalens.sae.metrics import lm_metrics, reconstruction_metrics
from metalens.store import capture_to_store

torch.manual_seed(0)
DATA = torch.randn(6000, 32) @ torch.randn(32, 32) + 0.5  # [n, d], correlated, off-centre


def rand_sae(kind="topk", k=4, width=96, d=32, seed=0):
    sae = Sae(SaeConfig(d_in=d, width=width, k=k, kind=kind), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def test_topk_keeps_exactly_k_per_row():
    sae = rand_sae(k=5)
    x = DATA[:200]
    assert ((sae.encode(x) != 0).sum(1) == 5).all()
    out = sae(x)
    assert out.top_idx.shape == (200, 5) and ((out.top_acts > 0).sum(1) == 5).all()


def test_batchtopk_keeps_k_times_batch():
    sae = rand_sae("batchtopk", k=6).train()
    x = DATA[:128]
    out = sae(x)
    assert int((out.top_acts > 0).sum()) == 6 * 128
    per_row = (out.top_acts > 0).sum(1)
    assert per_row.min() != per_row.max()  # per-batch, not per-row


def test_rejects_batch_seq_shape():
    sae = rand_sae()
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        sae.encode(torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="width 32"):
        sae(torch.randn(4, 31))


def test_sparse_backward_matches_dense_autograd():
    sae = rand_sae(k=4)
    x = DATA[:64]
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead=dead)
    (out.fvu + out.aux_loss).backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = F.relu((x - sae.b_dec.detach()) @ sae.W_enc + sae.b_enc)  # [n, width]
    vals, idx = pre.topk(4, dim=1)
    recon = torch.zeros_like(pre).scatter(1, idx, vals) @ sae.W_dec + sae.b_dec
    total = (x - x.mean(0)).pow(2).sum()
    fvu = (x - recon).pow(2).sum() / total
    a_idx = pre.detach().masked_fill(~dead, -1).topk(16, dim=1).indices
    aux_rec = torch.zeros_like(pre).scatter(1, a_idx, pre.gather(1, a_idx)) @ sae.W_dec
    aux = ((x - recon).detach() - aux_rec).pow(2).sum() / total
    (fvu + aux).backward()
    assert torch.allclose(out.fvu, fvu, atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, sparse[name], atol=1e-5), name


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_training_reduces_fvu_and_keeps_unit_decoder(tmp_path, kind):
    cfg = SaeTrainConfig(out=str(tmp_path / kind), site="x", k=8, width=128, kind=kind, batch_size=256, steps=60,
                         log_every=20, checkpoint_every=0)
    sae = train_sae(cfg, DATA, progress=False)
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    log = json.loads((tmp_path / kind / "train_log.json").read_text())
    assert log[-1]["fvu"] < 0.8 * log[0]["fvu"]
    m = reconstruction_metrics(sae, DATA[:2000])
    assert m.fvu < 0.75 and abs(m.explained_variance + m.fvu - 1) < 1e-9
    if kind == "batchtopk":
        assert sae.threshold.item() > 0  # learned, used as JumpReLU at inference
        assert 2 < m.l0 < 20
    else:
        assert m.l0 == 8


def test_resume_equals_uninterrupted(tmp_path):
    kw = dict(site="x", k=4, width=64, batch_size=500, steps=30, checkpoint_every=7, log_every=10, seed=3)
    full = train_sae(SaeTrainConfig(out=str(tmp_path / "a"), **kw), DATA, progress=False)
    cfg = SaeTrainConfig(out=str(tmp_path / "b"), **kw)
    train_sae(cfg, DATA, progress=False, stop_after=11)  # 6000 rows / 500 = 12 batches an epoch: resumes mid-epoch
    assert not (tmp_path / "b" / "cfg.json").exists()
    resumed = train_sae(cfg, DATA, progress=False)
    for name, p in full.state_dict().items():
        assert torch.allclose(p, resumed.state_dict()[name], atol=1e-6), name
    assert json.loads((tmp_path / "a" / "train_log.json").read_text()) == json.loads(
        (tmp_path / "b" / "train_log.json").read_text()
    )
    with pytest.raises(ValueError, match="different training config"):
        train_sae(SaeTrainConfig(out=str(tmp_path / "b"), **{**kw, "k": 5}), DATA, progress=False)


def test_save_load_round_trip_folds_normalisation(tmp_path):
    for kind in ("topk", "batchtopk"):
        sae = rand_sae(kind)
        s = 2.5
        sae.cfg = SaeConfig(d_in=32, width=96, k=4, kind=kind, input_scale=s)
        sae.threshold.fill_(0.3)
        save_sae(sae, tmp_path / kind)
        back = load_sae(tmp_path / kind)
        assert back.cfg.kind == kind and back.cfg.input_scale == 1.0
        x = DATA[:50]
        assert torch.allclose(back.encode(x), sae.encode(x * s) / s, atol=1e-5)
        assert torch.allclose(back.decode(back.encode(x)), sae.decode(sae.encode(x * s)) / s, atol=1e-4)
        cfg = json.loads((tmp_path / kind / "cfg.json").read_text())
        assert cfg["architecture"] == {"topk": "topk", "batchtopk": "jumprelu"}[kind]


def test_loads_saelens_layout(tmp_path):
    """Files exactly as SAELens 6.x writes them (cfg.json keys copied from `TopKSAE.save_model`)."""
    g = torch.Generator().manual_seed(1)
    w = dict(W_enc=torch.randn(8, 16, generator=g), b_enc=torch.randn(16, generator=g),
             W_dec=torch.randn(16, 8, generator=g), b_dec=torch.randn(8, generator=g))
    cfg = {"d_in": 8, "d_sae": 16, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12"},
           "k": 3, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
    (tmp_path / "topk").mkdir()
    (tmp_path / "topk" / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, tmp_path / "topk" / "sae_weights.safetensors")
    sae = load_sae(tmp_path / "topk")
    x = torch.randn(10, 8, generator=g)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    v, i = pre.topk(3, dim=1)
    ref = torch.zeros_like(pre).scatter(1, i, v.relu())
    assert torch.allclose(sae.encode(x), ref, atol=1e-6)
    assert torch.allclose(sae.decode(ref), ref @ w["W_dec"] + w["b_dec"], atol=1e-5)
    # jumprelu with a per-latent threshold
    thr = torch.rand(16, generator=g)
    jr = {k: v for k, v in cfg.items() if k not in ("k", "rescale_acts_by_decoder_norm")} | {"architecture": "jumprelu"}
    (tmp_path / "jr").mkdir()
    (tmp_path / "jr" / "cfg.json").write_text(json.dumps(jr))
    save_file({**w, "threshold": thr}, tmp_path / "jr" / "sae_weights.safetensors")
    assert torch.allclose(load_sae(tmp_path / "jr").encode(x), pre * (pre > thr), atol=1e-6)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg | {"architecture": "gated"}))
    save_file(w, tmp_path / "bad" / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="gated"):
        load_sae(tmp_path / "bad")


def identity_sae(d: int) -> Sae:
    """x = relu(x) - relu(-x): width 2d, k = d reconstructs every row exactly."""
    sae = Sae(SaeConfig(d_in=d, width=2 * d, k=d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_lm_metrics_on_tiny_model(tiny, tmp_path):
    texts = ["hello world, this is a test.", "the quick brown fox jumps", "abc def ghi jkl mno"]
    perfect = lm_metrics(tiny, identity_sae(tiny.d_model), "resid.1", texts, batch_size=2)
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-4) and perfect.kl_sae < 1e-6
    assert perfect.ce_zero != pytest.approx(perfect.ce_clean)
    store = capture_to_store(tiny, texts * 40, ["resid.1"], tmp_path / "acts", progress=False, texts_per_shard=30)
    cfg = SaeTrainConfig(out=str(tmp_path / "sae"), site="resid.1", k=8, width=128, batch_size=256, steps=40,
                         log_every=20, checkpoint_every=0)
    sae = train_sae(cfg, store, progress=False)
    assert sae.cfg.model == tiny.name and sae.cfg.site == "resid.1"
    m = reconstruction_metrics(sae, store, max_rows=1000)
    assert m.rows == 1000 and 0 <= m.dead_frac < 1 and m.fvu < 1
    lm = lm_metrics(tiny, sae, "resid.1", texts)
    assert lm.kl_sae > 0 and lm.tokens > 0


def test_frontier_plot(tmp_path):
    from metalens.viz.sae import plot_frontier

    p = plot_frontier([dict(k=8, l0=8, fvu=0.3), dict(k=16, l0=16, fvu=0.2)], tmp_path / "f.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_feature_cards_pages_and_neuronpedia(tiny, tmp_path):
    from metalens.capture import capture
    from metalens.features import Feature
    from metalens.sae.features import feature_cards, neuronpedia_export, sae_cards
    from metalens.models import logit_lens
    from metalens.viz.sae_pages import write_pages

    texts = ["the cat sat on the mat", "a dog ran in the park", "hello world, how are you"] * 4
    acts = capture(tiny, texts, ["resid.1", "neurons.1"])
    sae = rand_sae(k=4, width=48, d=tiny.d_model)
    sae.cfg = SaeConfig(d_in=tiny.d_model, width=48, k=4, site="resid.1")
    lat = sae.encode(acts["resid.1"])
    busy = (lat > 0).sum(0).argsort(descending=True)[:3].tolist()  # three latents that do fire
    cards = sae_cards(sae, acts, busy, tiny, n_top=5, per_quantile=2)
    i = busy[1]
    vals = lat[:, i]
    c = cards[1]
    assert c.index == i and c.site == "resid.1" and c.id.endswith(f":{i}")
    assert c.max_act == pytest.approx(vals.max().item(), rel=1e-5)
    assert c.frac_nonzero == pytest.approx((vals > 0).float().mean().item())
    top = c.top[0]
    assert top["value"] == pytest.approx(vals.max().item(), abs=1e-3)
    assert top["values"][top["target"]] == top["value"] and len(top["tokens"]) == len(top["values"])
    assert tiny.tokenizer.decode([acts.token_ids[vals.argmax()].item()]) == top["tokens"][top["target"]]
    for q in c.quantiles:
        assert all(q["lo"] < ex["value"] <= q["hi"] + 1e-4 for ex in q["examples"])
    assert sum(c.hist["counts"]) == int((vals > 0).sum())
    # logit lens: the unembedding row of a token (divided by the final norm's scale) promotes that token
    W_U = tiny.model.get_output_embeddings().weight
    t = tiny.tokenizer.convert_tokens_to_ids("q")
    pos, neg = logit_lens(tiny, W_U[t] / tiny.model.model.norm.weight)
    assert pos[0][0] == "q" and pos[0][1] > neg[0][1]
    # neurons are Features too
    ncards = feature_cards([Feature.neuron("neurons.1", 3)], acts, tiny, n_top=3)
    assert ncards[0].id == "neurons.1:3" and ncards[0].index == 3
    index = write_pages(cards + ncards, tmp_path / "pages", title="tiny")
    page = (tmp_path / "pages" / f"feature_{i}.html").read_text()
    assert index.exists() and c.id in page and "<svg" in page and f"feature_{i}.html" in index.read_text()
    paths = neuronpedia_export(cards, str(tmp_path / "np"), model_id="tiny", layer=1, sae_set="test", batch_size=2)
    assert len(paths) == 2
    batch = json.loads(open(paths[0]).read())
    assert batch["model_id"] == "tiny" and batch["layer"] == 1 and len(batch["features"]) == 2
    f0 = batch["features"][1]
    assert f0["feature_index"] == i and f0["activations"] and {"tokens", "values", "bin_min", "bin_max",
                                                               "qualifying_token_index"} <= set(f0["activations"][0])
    assert len(f0["pos_str"]) == len(f0["pos_values"]) == 10
