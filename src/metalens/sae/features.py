"""What a feature does: top-activating contexts (with quantile groups), histogram, logit effects.

    cards = sae_cards(sae, store.load("resid.15"), [12, 40], subject)   # SAE latents
    cards = feature_cards([Feature.neuron("neurons.3", 7)], acts, subject)  # any Feature
    write_pages(cards, "pages/")                  # static HTML, open pages/index.html from disk
    neuronpedia_export(cards, "np/", model_id="smollm2-135m-instruct", layer=15, sae_set="metalens-k32")

A card (plain dict, JSON-ready) holds, for one feature over the given rows (tokens):
  frac_nonzero, max_act, top (the n highest-activating contexts), quantiles (the non-zero range
  split into equal-width intervals, as sae_vis and Neuronpedia show them, a few random contexts
  from each), hist (30-bin histogram of the non-zero values), pos_logits / neg_logits (the
  direction read through the final norm's scale and the unembedding: the tokens it promotes and
  suppresses, a logit lens). A context is the tokens around the row, with the feature's value on
  each, and `target`, the index of the row's own token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..capture import Activations
from ..features import Feature, FeatureCard, make_card
from ..models import Subject, logit_lens
from .model import Sae


def sae_feature(sae: Sae, latent: int, site: str | None = None) -> Feature:
    """One SAE latent as a core Feature (reads [n, d], writes along its decoder row)."""
    site = site or sae.cfg.site
    name = f"{site}/sae-{sae.cfg.kind}-k{sae.cfg.k}-w{sae.cfg.width}:{latent}"
    return Feature(site, name, lambda a: sae.encode(a.float())[:, latent], direction=sae.W_dec[latent].detach())


def _context(acts: Activations, values: torch.Tensor, row: int, tokenizer, left: int, right: int) -> dict:
    lo, hi = max(0, row - left), min(len(acts), row + right + 1)
    same = (acts.text_idx[lo:hi] == acts.text_idx[row]).nonzero()[:, 0] + lo  # rows of the same text, in order
    rows = same.tolist()
    return dict(tokens=[tokenizer.decode([t]) for t in acts.token_ids[rows].tolist()],
                values=[round(v, 4) for v in values[rows].tolist()], target=rows.index(row),
                value=round(values[row].item(), 4), text=int(acts.text_idx[row]), position=int(acts.positions[row]))


def _card(fid: str, values: torch.Tensor, acts: Activations, tokenizer, subject: Subject | None,
          direction: torch.Tensor | None, n_top: int, n_quantiles: int, per_quantile: int, window: tuple[int, int],
          seed: int, index: int | None, site: str) -> FeatureCard:
    left, right = window
    vals = values.float().cpu()
    lens = logit_lens(subject, direction) if subject is not None and direction is not None else None
    return make_card(fid, vals.numpy(), lambda r: _context(acts, vals, r, tokenizer, left, right), index=index,
                     site=site, lens=lens, n_top=n_top, n_quantiles=n_quantiles, per_quantile=per_quantile, seed=seed)


@torch.no_grad()
def sae_cards(
    sae: Sae, acts: Activations, latents: Sequence[int], subject: Subject, site: str | None = None,
    n_top: int = 10, n_quantiles: int = 4, per_quantile: int = 3, window: tuple[int, int] = (16, 4),
    batch_size: int = 4096, seed: int = 0,
) -> list[FeatureCard]:
    """Cards for SAE latents over the rows of `acts` (one encode pass for all of them)."""
    site = site or sae.cfg.site
    x = acts[site]  # [n, d]
    latents = list(latents)
    bad = [i for i in latents if not 0 <= i < sae.cfg.width]
    if bad:
        raise IndexError(f"latents {bad} are out of range for an SAE of width {sae.cfg.width}")
    vals = torch.cat([sae.encode(x[i : i + batch_size].float())[:, latents] for i in range(0, len(x), batch_size)])
    return [_card(sae_feature(sae, i, site).id, vals[:, j], acts, subject.tokenizer, subject, sae.W_dec[i].detach(), n_top,
                  n_quantiles, per_quantile, window, seed, i, site) for j, i in enumerate(latents)]


@torch.no_grad()
def feature_cards(
    features: Sequence[Feature], acts: Activations, subject: Subject, n_top: int = 10, n_quantiles: int = 4,
    per_quantile: int = 3, window: tuple[int, int] = (16, 4), seed: int = 0,
) -> list[FeatureCard]:
    """Cards for any Features (neurons, directions, SAE latents) whose sites are in `acts`."""
    out = []
    for f in features:
        vals = f(acts[f.site]).float()  # [n]
        index = int(f.id.rsplit(":", 1)[-1]) if f.id.rsplit(":", 1)[-1].isdigit() else None
        out.append(_card(f.id, vals, acts, subject.tokenizer, subject, f.direction, n_top, n_quantiles, per_quantile,
                         window, seed, index, f.site))
    return out


def neuronpedia_export(cards: Sequence[FeatureCard], out: str, model_id: str, layer: int, sae_set: str,
                       batch_size: int = 128, dataset: str = "") -> list[str]:
    """Write Neuronpedia's dashboard batch files (batch-0.json, ...: {model_id, layer, sae_set, features})
    in the layout SAEDashboard's NeuronpediaRunner produces; fields we do not compute are empty lists."""
    from pathlib import Path

    from ..io import atomic_write_json

    def acts_of(card):
        rows = []
        for q in card.quantiles:
            rows += [(q["lo"], q["hi"], ex) for ex in q["examples"]]
        rows += [(0.0, card.max_act, ex) for ex in card.top]
        return [dict(bin_min=lo, bin_max=hi, bin_contains=1.0, tokens=ex["tokens"], values=ex["values"],
                     qualifying_token_index=ex["target"]) for lo, hi, ex in rows]

    feats = []
    for c in cards:
        h = c.hist or dict(counts=[], edges=[])
        centers = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
        feats.append(dict(
            feature_index=c.index, neuron_alignment_indices=[], neuron_alignment_values=[], neuron_alignment_l1=[],
            correlated_neurons_indices=[], correlated_neurons_l1=[], correlated_neurons_pearson=[],
            correlated_features_indices=[], correlated_features_l1=[], correlated_features_pearson=[],
            neg_str=[t for t, _ in c.neg_logits], neg_values=[v for _, v in c.neg_logits],
            pos_str=[t for t, _ in c.pos_logits], pos_values=[v for _, v in c.pos_logits],
            frac_nonzero=c.frac_nonzero, freq_hist_data_bar_values=centers, freq_hist_data_bar_heights=h["counts"],
            logits_hist_data_bar_heights=[], logits_hist_data_bar_values=[], n_prompts_total=c.rows,
            n_tokens_in_prompt=0, dataset=dataset, decoder_weights_dist=[], activations=acts_of(c)))
    paths = []
    for b, i in enumerate(range(0, len(feats), batch_size)):
        path = Path(out) / f"batch-{b}.json"
        atomic_write_json(path, dict(model_id=model_id, layer=layer, sae_set=sae_set, features=feats[i : i + batch_size]))
        paths.append(str(path))
    return paths
