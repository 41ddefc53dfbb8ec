"""Probes on the tiny model: a planted direction is recovered, thresholds hit their rate, files fail clearly."""

import json

import numpy as np
import pytest
import torch

from metalens.capture import read_span
from metalens.errors import DataError
from metalens.probes import (ProbeError, calibrate, evaluate, load_examples, load_probe, save_probe, span_acts,
                             threshold_at, train_probe)
from metalens.sites import Site, hook_site

WORDS = ["apple", "river", "stone", "cloud", "green", "paper", "light", "music", "table", "horse", "glass", "sugar"]


def planted_examples(n: int = 120, seed: int = 0):
    """Texts whose read span is the last word; label 1 texts get a planted direction added (by a hook)."""
    from metalens.probes import Labelled

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, 4)) + " ok"
        out.append(Labelled(text, (-3, None), int(i % 2), "even" if i % 4 < 2 else "odd", f"p{i // 2}"))
    return out


def planted_acts(tiny, examples, direction, site="resid.2", strength=3.0):
    """span_acts with the direction added at `site` on positive examples' spans (a second pass per class)."""
    out = [None] * len(examples)
    for label in (0, 1):
        idx = [i for i, e in enumerate(examples) if e.label == label]
        add = strength * direction if label else torch.zeros_like(direction)
        h = hook_site(tiny.model, Site(2, "resid"), lambda a: a + add)
        try:
            acts = span_acts(tiny, [examples[i] for i in idx], [site])
        finally:
            h.remove()
        for i, a in zip(idx, acts):
            out[i] = a
    return out


@pytest.mark.parametrize("method,aggregation", [("logreg", "mean"), ("diffmean", "mean"), ("pairs", "mean"),
                                                ("logreg", "max"), ("diffmean", "last")])
def test_training_recovers_a_planted_direction(tiny, method, aggregation):
    torch.manual_seed(0)
    direction = torch.randn(64)
    direction /= direction.norm()
    train, test = planted_examples(120, 0), planted_examples(60, 1)
    probe = train_probe(tiny, train, "resid.2", method, aggregation, acts=planted_acts(tiny, train, direction))
    cos = float(torch.nn.functional.cosine_similarity(probe.weight, direction, dim=0))
    report = evaluate(tiny, probe, test, acts=planted_acts(tiny, test, direction))
    assert report["overall"]["auroc"] > 0.95, report["overall"]
    if method != "logreg":  # logistic regression weighs dimensions by their noise, so only its effect is checked
        assert cos > 0.8, cos
    neg = torch.cat([a["resid.2"] for a, e in zip(planted_acts(tiny, test, direction), test) if not e.label])
    shift = float(3.0 * direction @ probe.weight) / float(probe(neg).std())  # the planted shift, in reading spreads
    assert shift > 3, shift
    # no planted direction: the same recipe is near chance on held-out data
    null = train_probe(tiny, train, "resid.2", method, aggregation)
    assert evaluate(tiny, null, test)["overall"]["auroc"] < 0.8


def test_span_reads_the_right_tokens(tiny):
    from metalens.probes import Labelled

    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    e = Labelled(chat, (-4, -2), 1, "t", None)  # "yo" then "<|im_end|>\n" (2 tokens) in the byte tokenizer
    acts = span_acts(tiny, [e], ["resid.0"])[0]["resid.0"]
    text = tiny.tokenizer.apply_chat_template(chat, tokenize=False)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tiny.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
    assert torch.allclose(acts, full[-4:-2], atol=1e-5)
    assert tiny.tokenizer.decode(ids[-4:-2]) == "yo"
    assert read_span("all", 10, 4) == slice(4, 10)  # the system message is never read
    with pytest.raises(DataError, match="selects no tokens"):
        read_span((5, 5), 10)


def test_threshold_calibration_hits_its_rate():
    rng = np.random.default_rng(0)
    calib, fresh = rng.normal(size=20000), rng.normal(size=20000)
    for fpr in (0.01, 0.05, 0.2):
        t = threshold_at(calib, fpr)
        assert abs((calib > t).mean() - fpr) <= 1 / len(calib) + 1e-9
        assert abs((fresh > t).mean() - fpr) < 0.25 * fpr + 0.002
    assert threshold_at([3.0, 1.0, 2.0], 0.0) == 3.0  # fpr 0: nothing in the control set is above it


def test_save_load_round_trip_and_eval_shape(tiny, tmp_path):
    ex = planted_examples(40)
    probe = train_probe(tiny, ex, "resid.1", name="t")
    from metalens.probes import score

    probe = calibrate(probe, score(tiny, probe, [e for e in ex if e.label == 0]), 0.1, "negatives")
    back = load_probe(save_probe(probe, tmp_path / "p"))
    assert torch.equal(back.weight, probe.weight) and back.threshold == probe.threshold and back.fpr == 0.1
    assert (back.site, back.method, back.aggregation, back.data_hash) == ("resid.1", "logreg", "mean", probe.data_hash)
    report = evaluate(tiny, back, ex)
    assert set(report["tasks"]) == {"even", "odd"} and report["overall"]["n"] == 40
    assert report["overall"]["fpr"] <= 0.1
    one_class = evaluate(tiny, back, [e for e in ex if e.label == 1])
    assert one_class["overall"]["auroc"] is None and one_class["overall"]["why_undefined"] == "no negative examples"
    json.dumps(report, allow_nan=False)


def test_bad_files_give_clear_errors(tiny, tmp_path):
    f = tmp_path / "ex.jsonl"
    f.write_text('{"context": "a", "question": "q", "answer": "Yes", "choices": ["Yes", "No"]}\n{not json}\n')
    with pytest.raises(DataError, match=r"ex.jsonl:2: not valid JSON"):
        load_examples(f)
    f.write_text('{"context": "a", "question": "q", "answer": "Maybe", "choices": ["Yes", "No"]}\n')
    with pytest.raises(DataError, match=r"ex.jsonl:1: 'answer' 'Maybe' is not one of the choices"):
        load_examples(f)
    f.write_text('{"context": "a", "question": "q", "answer": "Yes"}\n')
    with pytest.raises(DataError, match=r"ex.jsonl:1: a probe example needs 'choices'"):
        load_examples(f)
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    probe = train_probe(tiny, planted_examples(20), "resid.1")
    d = save_probe(probe, tmp_path / "p")
    (d / "probe.safetensors").write_bytes(b"garbage")
    with pytest.raises(ProbeError, match="not a readable safetensors file"):
        load_probe(d)
    save_probe(probe, d)
    (d / "probe.json").write_text('{"site": "resid.1"}')
    with pytest.raises(ProbeError, match=r"missing field\(s\) \['bias', 'method', 'aggregation'\]"):
        load_probe(d)
    with pytest.raises(ProbeError, match="nor a shipped probe name"):
        load_probe(tmp_path / "nothing")
    with pytest.raises(ProbeError, match="method 'svm' is not one of"):
        train_probe(tiny, planted_examples(20), "resid.1", method="svm")


@pytest.mark.integration
def test_shipped_deception_probe_on_the_real_model(real):
    """The shipped probe loads, reads the default model, and scores the builder's deceptive answers above honest ones."""
    from metalens.deception import resolve_reads, roleplay_examples
    from metalens.probes import from_dict, load_probe, score

    p = load_probe("deception")
    assert p.threshold is not None and p.fpr == 0.01 and p.weight.shape == (real.d_model,)
    rows = [r for r in resolve_reads(real.tokenizer, roleplay_examples()) if r["task"] == "roleplay"]
    ex = [from_dict(r, "roleplay") for r in rows]
    s = score(real, p, ex)
    lie = s[[e.label == 1 for e in ex]].mean()
    honest = s[[e.label == 0 for e in ex]].mean()
    assert lie > honest, (lie, honest)
