"""Autointerp: simulator math, one-pass simulation, scores, examples (tiny Llama, offline)."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from metalens import Feature, capture
from metalens.autointerp.examples import (
    ExampleConfig, Sequences, Window, feature_sequences, make_examples, make_windows, normalise, split_of,
)
from metalens.autointerp.llm import LLMError, LocalLLM
from metalens.autointerp.score import (
    auroc, balanced_accuracy, detection_score, fuzz_marks, fuzzing_score, pearson, simulation_score,
)
from metalens.autointerp.simulate import (
    expected_values, simulate, simulate_per_token, simulation_prompt, value_choices,
)
from metalens.store import capture_to_store


# ---- simulator math ----------------------------------------------------------------------------
def test_expected_value_on_stub_distributions():
    p = np.zeros((5, 11))
    p[0, 2] = 1.0  # certain 2
    p[1, 0] = p[1, 10] = 0.5  # half 0, half 10 -> 5
    p[2, :] = 1.0  # uniform over 0..10 -> 5
    p[3, 3] = p[3, 4] = 0.01  # tiny unnormalised mass -> renormalised: 3.5
    # row 4: no mass at all (an endpoint whose top-k held no digit) -> 0
    np.testing.assert_allclose(expected_values(p), [2.0, 5.0, 5.0, 3.5, 0.0])
    q = np.array([[0.1, 0.2, 0.3, 0.4]])  # scale 0..3
    assert expected_values(q)[0] == pytest.approx(0.2 + 0.6 + 1.2)


def test_simulation_prompt_offsets_point_at_placeholders():
    toks = ["The", " cat\n", "\tx"]
    p = simulation_prompt("cats", toks, max_value=9)
    assert len(p.offsets) == 3
    for o in p.offsets:
        assert p.prompt[o - 1] == "\t" and p.prompt[o:].startswith("unknown\n")
    lines = p.prompt[p.offsets[0] - 4 :].splitlines()
    assert lines[1] == " cat\\n\tunknown" and lines[2] == "\\tx\tunknown"  # token newlines/tabs escaped
    assert "from 0 to 9" in p.prompt


@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_simulation_equals_per_token(seed):
    llm = LocalLLM(__import__("metalens.testing", fromlist=["tiny_llama"]).tiny_llama(seed=seed))
    windows = [["The", " cat", " sat", " on", "\n", "mat"], ["a", "b"], ["x"]]
    one = simulate(llm, "animals", windows, max_value=9)
    per = simulate_per_token(llm, "animals", windows, max_value=9)
    assert [len(x) for x in one] == [6, 2, 1]
    for a, b in zip(one, per):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert all(((0 <= x) & (x <= 9)).all() for x in one)


def test_simulation_reads_the_digit_distribution(tiny):
    """The expected value is the mean over digit tokens of the model's own next-token probabilities."""
    llm = LocalLLM(tiny)
    p = simulation_prompt("cats", ["a", "b"], 9)
    logits, enc = llm.logits([p.prompt])
    ids = llm.choice_ids(value_choices(9))
    rows = llm.logit_rows(p.offsets, enc["offset_mapping"][0], enc["attention_mask"][0], p.prompt)
    probs = logits[0, rows].softmax(-1)[:, ids].double().numpy()
    want = (probs * np.arange(10)).sum(1) / probs.sum(1)
    np.testing.assert_allclose(simulate(llm, "cats", [["a", "b"]], 9)[0], want, atol=1e-6)


def test_position_probs_errors(tiny):
    llm = LocalLLM(tiny)
    with pytest.raises(LLMError, match="one token"):
        llm.position_probs([("ab", [2])], ["10"])  # two bytes for the byte tokenizer
    with pytest.raises(LLMError, match="token boundaries|no token starts"):
        llm.position_probs([("ab", [0])], ["a"])  # nothing before the first token


# ---- metrics -----------------------------------------------------------------------------------
def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    s, y = rng.random(50), rng.integers(0, 2, 50)
    s[:10] = 0.5  # ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert balanced_accuracy(s, y) == pytest.approx(balanced_accuracy_score(y, s > 0.5))
    a, b = rng.random(30), rng.random(30)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert pearson(np.ones(5), a[:5]) is None and auroc([0.3], [1]) is None  # undefined, not 0.0 / 0.5
    with pytest.raises(ValueError, match="predictions"):
        pearson(a, b[:3])


def test_scores_equal_a_recomputation(tiny):
    llm = LocalLLM(tiny)
    w = lambda toks, vals, t: Window(toks, np.array(vals, float), t, 0)  # noqa: E731
    top = [w(["Jan", "uary", " 5"], [3, 4, 0], 0), w(["in", " May"], [0, 5], 1)]
    rnd = [w(["the", " end"], [0, 0], 2), top[0]]
    sim = simulation_score(llm, "months", top, rnd, max_value=9)
    assert -1 <= sim["all"] <= 1 and -1 <= sim["random"] <= 1 and sim["n_tokens"] == 7
    det = detection_score(llm, "months", top, [rnd[0]], yes_no=("Y", "N"))
    # the AUROC of the model's own P(yes) for each window, positives first (recomputed by hand)
    from metalens.autointerp.score import answer_format, detection_prompt
    from metalens.metrics import auroc as auroc_of

    suffix, choices = answer_format(llm, ("Y", "N"))
    prompts = [detection_prompt("months", w.tokens) + suffix for w in top + [rnd[0]]]
    p_yes = [float(q[0, 0] / q[0].sum()) for q in llm.position_probs([(t, [len(t)]) for t in prompts], choices)]
    assert det["auroc"] == pytest.approx(auroc_of(p_yes, [1, 1, 0]), abs=1e-6) and det["n"] == 3
    fz = fuzzing_score(llm, "months", top, yes_no=("Y", "N"))
    # right vs wrong highlights of each window (the same seeded marks), scored by the model's own P(yes)
    from metalens.autointerp.score import fuzz_marks, fuzzing_prompt

    rng = np.random.default_rng(0)
    fprompts = []
    for win in top:
        right, wrong = fuzz_marks(win, 0.0, rng)
        fprompts += [fuzzing_prompt("months", win.tokens, right) + suffix, fuzzing_prompt("months", win.tokens, wrong) + suffix]
    fp = [float(q[0, 0] / q[0].sum()) for q in llm.position_probs([(t, [len(t)]) for t in fprompts], choices)]
    assert fz["auroc"] == pytest.approx(auroc_of(fp, [1, 0, 1, 0]), abs=1e-6) and fz["n"] == 4


def test_fuzz_marks():
    rng = np.random.default_rng(0)
    right, wrong = fuzz_marks(Window(list("abcdef"), np.array([0, 2, 0, 3, 0, 0.0])), 0.0, rng)
    assert right == [False, True, False, True, False, False]
    assert sum(wrong) == 2 and not any(r and w for r, w in zip(right, wrong))


# ---- examples ----------------------------------------------------------------------------------
def synthetic_windows(n_texts=60, length=40, seed=0):
    rng = np.random.default_rng(seed)
    vocab = [f" w{i}" for i in range(30)]
    toks, vals = [], []
    for t in range(n_texts):
        ts = list(rng.choice(vocab, length))
        toks.append(ts)
        vals.append(np.array([float(rng.integers(1, 10)) if x == " w3" and t % 3 == 0 else 0.0 for x in ts]))
    return Sequences(toks, vals)


def test_windows_and_splits():
    seqs = synthetic_windows()
    wins = make_windows(seqs, window=16, min_window=8)
    assert all(len(w.tokens) <= 16 for w in wins)
    assert sum(len(w.tokens) for w in wins) == 60 * 40  # 40 = 16 + 16 + an 8-token tail, kept
    assert sum(len(w.tokens) for w in make_windows(seqs, 16, min_window=9)) == 60 * 32  # tail dropped
    w = wins[1]
    assert w.tokens == seqs.tokens[w.text][w.start : w.start + 16]
    np.testing.assert_array_equal(w.values, seqs.values[w.text][w.start : w.start + 16])
    cfg = ExampleConfig(n_top=5, n_random=6, n_negative=4, n_hard=4)
    ex = make_examples(wins, cfg)
    texts = {s: {x.text for x in e.top + e.random + e.negative + e.hard_negative + e.stratified} for s, e in ex.items()}
    assert not (texts["train"] & texts["val"]) and not (texts["val"] & texts["test"]) and not (texts["train"] & texts["test"])
    for e in ex.values():
        assert [x.max for x in e.top] == sorted([x.max for x in e.top], reverse=True)
        assert all(x.max > 0 for x in e.top + e.stratified)
        assert all(x.max <= 0 for x in e.negative + e.hard_negative)
        # hard negatives hold the token the feature fires on (" w3") in a text where it does not fire
        assert all(" w3" in x.tokens for x in e.hard_negative)
    assert split_of(7, (0.5, 0.25, 0.25)) == split_of(7, (0.5, 0.25, 0.25))
    np.testing.assert_array_equal(normalise(np.array([-1.0, 0.0, 2.5, 5.0]), 5.0), [0, 0, 5, 10])


def test_feature_sequences_from_store(tiny, tmp_path):
    texts = ["hello world", "the cat sat on the mat", "x"]
    store = capture_to_store(tiny, texts, ["neurons.1"], tmp_path / "acts", progress=False)
    f = Feature.neuron("neurons.1", 7)
    seqs = feature_sequences(store, f, tiny.tokenizer)
    direct = capture(tiny, texts, ["neurons.1"])
    for t, text in enumerate(texts):
        assert "".join(seqs.tokens[t]) == text
        np.testing.assert_allclose(seqs.values[t], direct["neurons.1"][direct.text_idx == t][:, 7].numpy(), atol=1e-6)
    d = torch.randn(tiny.d_mlp)
    g = Feature.from_direction("neurons.1", d, "rand")
    seqs_d = feature_sequences(store, g, tiny.tokenizer)
    np.testing.assert_allclose(seqs_d.values[1], (direct["neurons.1"][direct.text_idx == 1] @ d).numpy(), atol=1e-4)


# ---- explain + search --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, want",
    [
        ("Explanation: months of the year.", "months of the year"),
        ("[EXPLANATION]: Numbers in dates", "Numbers in dates"),
        ('**Explanation:** "words inside quotes"\n\nI hope this helps!', "words inside quotes"),
        ("Let me look.\nThey are all months.\nExplanation: month names", "month names"),
        ("<think>maybe Explanation: wrong</think>Explanation: right one", "right one"),
        ("<think>never closed Explanation: lost", None),
        ("This neuron detects the word 'and'.", "the word 'and'"),
        ("The neuron fires on: commas", "commas"),
        ("- colors like red and blue\n- also green", "colors like red and blue"),
        ("1. capitalised words", "capitalised words"),
        ("  \n\t ", None),
        ("Explanation:", None),
        ("...", None),
        ("", None),
        ("Explanation: " + "very " * 100 + "long", "very " * 39 + "very"),
    ],
)
def test_parse_odd_explainer_outputs(reply, want):
    from metalens.autointerp.explain import parse_explanation

    got = parse_explanation(reply)
    assert got == (want.strip() if isinstance(want, str) else want)
    if got:
        assert len(got) <= 200 and "\n" not in got


def test_explain_prompt_marks_active_tokens():
    from metalens.autointerp.explain import explain_messages

    w = Window(["We", " met", " in", " January", "."], np.array([0, 0, 0, 4.0, 0]))
    w2 = Window(["May", " 3"], np.array([8.0, -1.0]), 1)
    msg = explain_messages([w, w2])[1]["content"]
    assert "We met in<< January>>." in msg and "('January', 5)" in msg  # 4 / max 8 -> 5 of 10
    assert "<<May>> 3" in msg and "('May', 10)" in msg and "<< 3>>" not in msg


def _search_features(n=3):
    feats = []
    for j in range(n):
        seqs = synthetic_windows(n_texts=24, length=24, seed=j)
        wins = make_windows(seqs, window=12, min_window=6)
        cfg = ExampleConfig(n_top=2, n_quantiles=1, n_per_quantile=1, n_random=2, n_negative=1, n_hard=1)
        feats.append((f"syn:{j}", lambda wins=wins, cfg=cfg: make_examples(wins, cfg)))
    return feats


def test_search_resume_after_kill_between_db_and_progress_writes(tiny, tmp_path, monkeypatch):
    """Killed after a feature's rows reached the database but before progress.json: no duplicates."""
    from metalens import ResultsDB
    from metalens.autointerp import search as search_mod

    llm = LocalLLM(tiny)
    cfg = search_mod.SearchConfig(k=2, max_tokens=12, n_explain=3, max_value=9, yes_no=("Y", "N"),
                                  examples=ExampleConfig(n_top=2), control=False)
    db = ResultsDB(tmp_path / "r.sqlite")
    feats = _search_features()[:1]
    real_write = search_mod.atomic_write_json

    def dying_write(path, obj):
        if path.name == "progress.json":
            raise KeyboardInterrupt("killed between the database and progress writes")
        real_write(path, obj)

    monkeypatch.setattr(search_mod, "atomic_write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        search_mod.run_search(llm, llm, feats, cfg, tmp_path / "run", db, progress=False)
    assert len(db.explanations("syn:0")) > 0  # the interrupted attempt did write rows
    monkeypatch.setattr(search_mod, "atomic_write_json", real_write)
    res = search_mod.run_search(llm, llm, feats, cfg, tmp_path / "run", db, progress=False)
    rows = db.explanations("syn:0")
    assert len(rows) == len(res["syn:0"]["candidates"])  # the half-recorded attempt was replaced, not kept
    assert {r["run_id"] for r in rows} == {res["syn:0"]["run_id"]}


def test_search_is_resumable(tiny, tmp_path):
    from metalens import ResultsDB
    from metalens.autointerp.search import SearchConfig, run_search, summary

    llm = LocalLLM(tiny)
    cfg = SearchConfig(k=2, max_tokens=12, n_explain=3, max_value=9, yes_no=("Y", "N"),
                       examples=ExampleConfig(n_top=2))
    db = ResultsDB(tmp_path / "r.sqlite")
    feats = _search_features()
    seen = []

    def interrupt(rec):
        seen.append(rec["feature"])
        if len(seen) == 1:
            raise KeyboardInterrupt("simulated kill after the first feature")

    with pytest.raises(KeyboardInterrupt):
        run_search(llm, llm, feats, cfg, tmp_path / "run", db, on_feature=interrupt, progress=False)
    assert db.runs("autointerp.explain")[-1]["status"] == "failed"
    first = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert list(first) == ["syn:0"]
    n_rows = len(db.explanations("syn:0"))
    res = run_search(llm, llm, feats, cfg, tmp_path / "run", db, on_feature=interrupt, progress=False)
    assert seen == ["syn:0", "syn:1", "syn:2"]  # syn:0 was not redone
    assert list(res) == ["syn:0", "syn:1", "syn:2"]
    assert {k: v for k, v in res["syn:0"].items() if k != "control"} == first["syn:0"]
    for f, rec in res.items():
        assert "text" in rec, rec
        rows = db.explanations(f)
        cands = [r for r in rows if not r["explainer"].startswith("control")]
        assert len(cands) == len(rec["candidates"]) <= 2  # written once, resume added none
        assert all(r["explainer"] == tiny.name and r["prompt_version"] and r["seed"] is not None for r in cands)
        best = [r for r in cands if any(s["metric"] == "selected" for s in r["scores"])]
        assert len(best) == 1 and best[0]["text"] == rec["text"]
        assert {s["metric"] for s in best[0]["scores"]} >= {"simulation", "detection", "fuzzing", "selected"}
        assert rec["control"]["from"] != f and rec["control"]["text"] == res[rec["control"]["from"]]["text"]
        ctrl = [r for r in rows if r["explainer"].startswith("control")]
        assert len(ctrl) == 1
    assert len(db.explanations("syn:0")) == n_rows + 1  # + the control
    s = summary(res)
    # these small features have no activating window in their test split: r is undefined there (it
    # was reported as 0.0 and averaged in), so the means are None and the features are counted
    assert s["explained"] == 3 and s["simulation"] is None and s["control_simulation"] is None
    assert s["undefined"]["simulation"] == 3 and res["syn:0"]["test"]["simulation"]["all_reason"]
    # a different config in the same directory is refused
    with pytest.raises(ValueError, match="different config"):
        run_search(llm, llm, feats, SearchConfig(k=3), tmp_path / "run", db, progress=False)


def test_cli_explain_on_a_store(tiny, tmp_path):
    from typer.testing import CliRunner

    from metalens.cli import app

    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    texts = [f"the cat {i} sat {i * 7}" for i in range(8)]
    capture_to_store(tiny, texts, ["neurons.1"], tmp_path / "acts", progress=False)
    args = ["explain", "--store", str(tmp_path / "acts"), "--features", "neurons.1:3-4", "--k", "2",
            "--model", str(tmp_path / "model"), "--device", "cpu", "--window", "8", "--no-control", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert [f["feature"] for f in out["features"]] == ["neurons.1:3", "neurons.1:4"]
    assert all(f["explanation"] and -1 <= f["simulation"] <= 1 and f["control"] is None for f in out["features"])
    assert (tmp_path / "acts" / "explain-k2" / "progress.json").exists()
    r2 = CliRunner().invoke(app, args)  # done already: resumes, recomputes nothing, same answer
    assert r2.exit_code == 0 and json.loads(r2.stdout[r2.stdout.index("{"):])["features"] == out["features"]
    bad = CliRunner().invoke(app, args[:3] + ["--features", "neurons.1"] + args[5:])
    assert bad.exit_code != 0 and "SITE:INDEX" in bad.output


# ---- synthetic ground truth --------------------------------------------------------------------
def test_synthetic_features_follow_their_rules():
    from metalens.autointerp.synthetic import BY_NAME, FEATURES, corpus, words

    toks = ["She", " said", ',', ' "', "Meet", " me", " on", " Monday", ',"', " in", " Sept", "ember", " (", "at",
            " 9", ")", " singing", " extraordinarily", " red", " songs", "."]
    v = lambda name: BY_NAME[name].values(toks).tolist()  # noqa: E731
    on = lambda name: [toks[i] for i, x in enumerate(v(name)) if x > 0]  # noqa: E731
    assert on("months") == [" Sept", "ember"]  # a word split into tokens: every token of it
    assert on("weekdays") == [" Monday"]
    assert on("dates") == [" Monday", " Sept", "ember"]  # OR
    assert on("quoted") == ["Meet", " me", " on", " Monday"]  # delimiters excluded
    assert on("quoted_capital") == ["Meet", " Monday"]  # AND
    assert on("parens") == ["at", " 9"]
    assert on("colours") == [" red"] and on("ing") == [" singing"] and on("numbers") == [" 9"]
    assert v("digit_value")[toks.index(" 9")] == 10.0  # graded: digit + 1
    assert v("word_length")[toks.index(" extraordinarily")] == len("extraordinarily") - 7
    assert v("word_length")[toks.index(" singing")] == 0.0
    assert [w for w, _ in words(toks)][:4] == ["She", "said", "Meet", "me"]
    # label noise: same labels for the same text, some flips, mostly agreeing with the clean rule
    texts = corpus()
    assert len(texts) > 100 and any("January" in t for t in texts)
    clean, noisy = BY_NAME["months"], BY_NAME["months_noisy"]
    split = [t.split(" ") for t in texts]
    toks_all = [[w if i == 0 else " " + w for i, w in enumerate(ws)] for ws in split]
    a = np.concatenate([clean.values(t, i) for i, t in enumerate(toks_all)])
    b = np.concatenate([noisy.values(t, i) for i, t in enumerate(toks_all)])
    b2 = np.concatenate([noisy.values(t, i) for i, t in enumerate(toks_all)])
    np.testing.assert_array_equal(b, b2)
    assert 0 < (a != b).sum() < 0.05 * len(a) and ((a > 0) & (b > 0)).sum() > 0.7 * (a > 0).sum()
    assert len({f.name for f in FEATURES}) == len(FEATURES) and all(f.explanation for f in FEATURES)


@pytest.mark.integration
def test_real_model_one_pass_equals_per_token_and_scale(real):
    """On SmolLM2's BPE tokenizer the placeholders fall on token boundaries and "10" is two tokens."""
    from metalens.autointerp.simulate import scale_for

    llm = LocalLLM(real)
    assert scale_for(llm) == 9
    toks = [["We", " met", " in", " January", "."]]
    one = simulate(llm, "names of months", toks)
    per = simulate_per_token(llm, "names of months", toks)
    np.testing.assert_allclose(one[0], per[0], atol=1e-4)


def test_search_records_become_core_explanations():
    from metalens.autointerp.search import explanations
    from metalens.features import Explanation

    results = {
        "f:1": {"text": "months", "run_id": 7, "test": {"simulation": {"all": 0.5, "random": None},
                                                          "detection": {"auroc": 0.75}},
                "control": {"test": {"simulation": {"all": 0.1}}}},
        "f:2": {"feature": "f:2", "skipped": "no activating windows in the train split"},
    }
    (e,) = explanations(results)
    assert isinstance(e, Explanation) and (e.feature, e.text, e.run_id) == ("f:1", "months", 7)
    # defined scores only: the undefined random-window r is left out, not reported as 0
    assert e.scores == {"simulation": 0.5, "detection_auroc": 0.75, "control_simulation": 0.1}
