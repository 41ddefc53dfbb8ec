"""Trained simulator and explainer: rules, the expected-value readout, training on the tiny Llama,
store-free JSONL formats, token alignment, and undefined scores."""

import json

import numpy as np
import pytest
import torch

from metalens.autointerp import rules as R
from metalens.autointerp.examples import ExampleConfig, ExampleSet, Window, make_examples
from metalens.autointerp.formats import explain_file, simulate_file, split_windows
from metalens.autointerp.score import detection_score, simulation_score
from metalens.autointerp.simulator import Encoder, TrainedSimulator, value_token_ids
from metalens.errors import DataError
from metalens.testing import tiny_llama


def by_name():
    return {r.name: r for r in R.make_rules()}


# ---- rules give the activations their definitions say ----------------------------------------------
def test_word_rules_mark_every_token_of_the_word():
    r = by_name()
    toks = ["We", " met", " in", " Jan", "uary", " in", " France", "."]
    np.testing.assert_array_equal(r["months"].values(toks), [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(r["countries"].values(toks), [0, 0, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(r["dates"].values(toks), r["months"].values(toks))  # OR with weekdays (none here)
    np.testing.assert_array_equal(r["ing"].values(["He", " was", " sing", "ing", " king"]), [0, 0, 1, 1, 0])


def test_context_and_graded_rules_by_hand():
    r = by_name()
    toks = ["She", " said", ' "', "Go", " now", '"', " and", " left", "."]
    np.testing.assert_array_equal(r["in_quotes"].values(toks), [0, 0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(r["capital_in_quotes"].values(toks), [0, 0, 0, 1, 0, 0, 0, 0, 0])  # AND
    np.testing.assert_array_equal(r["sentence_start"].values(["The", " end", ".", " Then", " more"]), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(r["after_negation"].values(["I", " do", " not", " know", " it"]), [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(r["after_colon"].values(["Note", ":", " read", " this"]), [0, 0, 1, 0])
    np.testing.assert_array_equal(r["digit_value"].values([" 7", "x", "0", "12"]), [8, 0, 1, 0])
    np.testing.assert_array_equal(r["word_length"].values(["a", " wonderful"]), [0, 3])  # 9 letters - 6
    np.testing.assert_array_equal(r["sentence_position"].values(["A", " b", ".", " C"]), [1, 2, 0, 1])


def test_rules_are_grouped_in_families_with_several_phrasings():
    rs = R.make_rules()
    assert len({r.name for r in rs}) == len(rs)
    assert {r.family for r in rs} == set(R.FAMILIES)
    assert all(len(r.explanations) >= 3 for r in rs)


def test_word_lists_read_relation_files(tmp_path):
    (tmp_path / "factual").mkdir()
    (tmp_path / "factual" / "country_capital_city.json").write_text(
        json.dumps({"samples": [{"subject": "Atlantis", "object": "X"}, {"subject": "Two Words", "object": "Y"}]}))
    lists = R.word_lists(tmp_path)
    assert "Atlantis" in lists["countries"] and "Two Words" not in lists["countries"]
    assert "Atlantis" not in R.word_lists()["countries"]


def test_listed_rules_fire_on_the_named_words_only():
    counts = {"war": 40, "War": 5, "Iraq": 30, "France": 30, "Japan": 30, "table": 10, "of": 90, "x": 50, "rare": 1}
    rs = R.listed_rules(counts, 60, seed=1, capped={"Iraq", "France", "Japan"}, symbol_share=0.2)
    assert len(rs) == 60 and {r.family for r in rs} == {"lists"} and len({r.name for r in rs}) == 60
    toks = ["The", " war", " in", " Iraq", " (", "France", ")", " tables", " of", " x", " rare", " W", "ar"]
    for r in rs:
        v = r.values(toks)
        if r.name.startswith("list_sym_"):
            named = {t for t in toks if t.strip() in r.explanations[0].removeprefix("the tokens ").replace(",", " ").split()}
            assert set(np.flatnonzero(v)) == {i for i, t in enumerate(toks) if t in named}
            continue
        assert r.explanations[0].startswith("words like ")
        named = {w.strip('",').lower() for w in r.explanations[0][len("words like "):].replace(" or ", ", ").split(", ")}
        assert named <= {"war", "iraq", "france", "japan", "table", "of"}  # "x" is one letter, "rare" too rare
        assert len(named & {"iraq", "france", "japan"}) <= 1  # a capped list never spells out a category
        want = {i for i, t in enumerate(toks) if t.strip().lower() in named}
        if "war" in named:
            want |= {11, 12}  # " W" + "ar" is one word, War: every token of it
        assert set(np.flatnonzero(v)) == want  # "tables" is another word: not marked for "table"
    assert any(r.name.startswith("list_sym_") for r in rs) and any(len(r.explanations[0].split(",")) > 1 for r in rs)


# ---- the expected-value readout -------------------------------------------------------------------------
def test_expected_value_readout_equals_manual_computation(tiny):
    sim = TrainedSimulator(tiny.model, tiny.tokenizer)
    toks = ["ab", "", "c d"]  # "ab" and "c d" are several byte tokens; "" is none
    got = sim.simulate("animals", [toks])[0]
    prefix = tiny.tokenizer("Explanation: animals\nText:", add_special_tokens=False)["input_ids"]
    ids = prefix + tiny.tokenizer("ab", add_special_tokens=False)["input_ids"]
    read_ab = len(ids) - 1
    ids += tiny.tokenizer("c d", add_special_tokens=False)["input_ids"]
    read_cd = len(ids) - 1
    with torch.no_grad():
        logits = tiny.model(torch.tensor([ids])).logits[0]  # [seq, vocab]
    vid = value_token_ids(tiny.tokenizer)
    ev = lambda row: float((logits[row, vid].softmax(-1) * torch.arange(11.0)).sum())  # noqa: E731
    np.testing.assert_allclose(got, [ev(read_ab), ev(read_ab), ev(read_cd)], atol=1e-5)  # "" reads before it
    assert len(vid) == 11 and len(set(vid)) == 11


def test_predictions_align_to_given_strings_split_or_merged(tiny):
    sim = TrainedSimulator(tiny.model, tiny.tokenizer)
    split = sim.simulate("x", [["hello", " world"]])[0]
    merged = sim.simulate("x", [["h", "e", "l", "l", "o", " world"]])[0]
    assert len(split) == 2 and len(merged) == 6
    # same byte sequence either way: the last value of "hello" equals the value at its last byte "o"
    np.testing.assert_allclose(split, merged[[4, 5]], atol=1e-5)
    enc = Encoder(tiny.tokenizer).batch([("x", ["hello", " world"])])
    assert enc.reads[0][1] - enc.reads[0][0] == 6  # " world" is 6 byte tokens


def test_simulate_many_equals_one_full_row_per_window(tiny):
    from metalens.autointerp.simulator import value_logits, expected_values

    sim = TrainedSimulator(tiny.model, tiny.tokenizer, batch_size=3)  # 3 rows a batch: several batches, mixed prefixes
    expls = ["animals", "  names of the months of the year ", "x"]  # prompts of different lengths (padded together)
    wins = [["", "ab", " c"], ["We", " met", " in", " May", "."], ["hello"], ["a", "", "bcd", " e", "f"], [""]]
    many = sim.simulate_many(expls, wins)
    for e, preds in zip(expls, many):
        for w, got in zip(wins, preds):  # reference: the whole prompt + window as one unpadded row (value_logits)
            with torch.no_grad():
                lg = value_logits(tiny.model, sim.encoder.batch([(e, w)]), sim.value_ids)[0]
            np.testing.assert_allclose(got, expected_values(lg).numpy(), atol=1e-5)
        for a, b in zip(preds, sim.simulate(e, wins)):  # one explanation alone: same predictions
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert [len(p) for p in many[0]] == [len(w) for w in wins]


def test_long_windows_are_read_in_pieces_each_after_its_context(tiny):
    from metalens.autointerp.simulator import value_logits, expected_values

    whole = TrainedSimulator(tiny.model, tiny.tokenizer)
    sim = TrainedSimulator(tiny.model, tiny.tokenizer, batch_size=2, piece=3, piece_context=2)
    win = ["We", " met", "", " in", " May", " and", " June", "."]  # 8 strings: pieces start at 0, 3, 6
    got = sim.simulate_many(["months", "x"], [win, ["a", "b"]])
    assert [len(p) for p in got[0]] == [8, 2]
    for start in (0, 3, 6):  # each piece as its own window, after the 2 strings before it
        lo = max(0, start - 2)
        ref = whole.simulate("months", [win[lo : start + 3]])[0][start - lo :]
        np.testing.assert_allclose(got[0][0][start : start + 3], ref, atol=1e-5)
    np.testing.assert_allclose(got[1][1], whole.simulate("x", [["a", "b"]])[0], atol=1e-5)  # short: whole
    assert not np.allclose(got[0][0], whole.simulate("months", [win])[0], atol=1e-5)  # pieces see less context


def test_explanations_that_name_their_examples_are_read_as_they_are():
    from metalens.autointerp.simulator import with_examples

    assert with_examples("names of countries", ["USA", "UK"]) == "names of countries (USA, UK)"
    for e in ("words like Vietnam or Russia", "the word car", 'the tokens ( or ;', '"May" or "June"',
              "fruits (apple, pear)"):
        assert with_examples(e, ["USA", "UK"]) == e


def test_select_simulates_each_distinct_candidate_once(tiny):
    from metalens.autointerp.explainer import select, simulation_r

    class Counting(TrainedSimulator):
        calls: list = []

        def simulate_many(self, explanations, windows):
            self.calls.append(list(explanations))
            return super().simulate_many(explanations, windows)

    sim = Counting(tiny.model, tiny.tokenizer)
    wins = [(["in", " May", "."], [0.0, 5.0, 0.0]), (["the", " end"], [1.0, 0.0])]
    best, rs = select(sim, ["months", "dots", "months"], wins)
    assert sim.calls == [["months", "dots"]] and rs[0] == rs[2] and best in (0, 1)
    np.testing.assert_allclose(rs[1], simulation_r(sim, "dots", wins), atol=1e-4)


# ---- WordNet categories ----------------------------------------------------------------------------------
MINI_NOUNS = [  # offset lexfile n words ptrs | gloss, in WordNet's data.noun format
    "00000001 06 n 01 vehicle 0 000 | a conveyance",
    '00000002 06 n 01 car 0 001 @ 00000001 n 0000 | a motor vehicle; "he drove the car to the station"',
    "00000003 06 n 01 bus 0 001 @ 00000001 n 0000 | a large vehicle",
    "00000004 06 n 01 bank 0 000 | a financial institution",
    "00000005 06 n 01 bank 1 001 @ 00000001 n 0000 | a rare sense under vehicle",
    "00000006 06 n 01 run 0 001 @ 00000001 n 0000 | a noun sense of a mostly-verb word",
    "00000007 06 n 01 Zeppelin 0 001 @i 00000001 n 0000 | an instance",
    "00000008 06 n 01 cab 0 001 @ 00000002 n 0000 | a car for hire (a grandchild of vehicle)",
]
MINI_INDEX = ["vehicle n 1 1 ~ 1 1 00000001", "car n 1 2 @ ~ 1 1 00000002", "bus n 1 1 @ 1 1 00000003",
              "bank n 2 1 @ 2 1 00000004 00000005", "run n 1 1 @ 1 0 00000006", "zeppelin n 1 1 @ 1 0 00000007",
              "cab n 1 1 @ 1 0 00000008"]


def mini_wordnet(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.noun").write_text("  licence header line\n" + "\n".join(MINI_NOUNS) + "\n")
    (root / "index.noun").write_text("  licence header line\n" + "\n".join(MINI_INDEX) + "\n")
    (root / "index.verb").write_text("run v 1 1 @ 1 5 02000001\n")
    return root


def test_wordnet_categories_by_first_sense_and_part_of_speech(tmp_path):
    from metalens.autointerp import wordnet as W

    assert W.read_wordnet(tmp_path / "absent") is None
    wn = W.read_wordnet(mini_wordnet(tmp_path / "wn"))
    m = W.members(wn)
    # bank's FIRST sense is not a vehicle, run is mostly a verb; cab counts through car (two links up)
    assert m["00000001"] == {"vehicle", "car", "bus", "Zeppelin", "cab"} and m["00000002"] == {"car", "cab"}
    assert (W.plural("bus"), W.plural("city"), W.plural("day"), W.plural("car")) == ("buses", "cities", "days", "cars")
    counts = W.word_counts(["The car and two cars, a bus, a cab, the bank and a Zeppelin run."])
    cats = W.categories(wn, counts, exclude=["cab"], min_seen=3, min_count=3, max_share=1.0, max_excluded=0.5)
    veh = next(c for c in cats if c.name == "vehicle")
    assert {"car", "cars", "bus", "buses", "Zeppelin"} <= veh.words and "cab" not in veh.words and "bank" not in veh.words
    assert set(veh.seen) == {"car", "cars", "bus", "Zeppelin"} and veh.lexfile == "artifact"
    # a category losing most of its seen members to the excluded words is that concept: dropped
    assert "vehicle" not in {c.name for c in W.categories(wn, counts, exclude=["bus", "car", "cars"], min_seen=1,
                                                          min_count=1, max_share=1.0)}
    assert W.example_sentences(wn) == ["he drove the car to the station"]
    rule = R.category_rules([veh])[0]
    assert rule.family == "wn_artifact" and rule.explanations[0] == "vehicles" and len(rule.explanations) == 4
    np.testing.assert_array_equal(rule.values(["A", " Zeppelin", " and", " two", " bus", "es"]), [0, 1, 0, 0, 1, 1])


def test_wordnet_orders_do_not_depend_on_the_hash_seed(tmp_path):
    # members tied on counts are ordered by the word itself, so two processes build the same categories
    import os
    import subprocess
    import sys

    root = mini_wordnet(tmp_path / "wn")
    (root / "cntlist.rev").write_text("walk%2:38:00:: 1 9\nrun%2:38:00:: 1 9\ngo%2:38:00:: 1 9\nhop%2:38:00:: 1 9\n")
    code = (f"from metalens.autointerp import wordnet as W; wn = W.read_wordnet({str(root)!r}); "
            "c = W.word_counts(['a car, a bus, a cab, a Zeppelin, we walk, run, go and hop']); "
            "print([x.seen for x in W.categories(wn, c, min_seen=2, min_count=2, max_share=1.0)], "
            f"[x.seen for x in W.verb_categories({str(root)!r}, c, min_seen=2, max_share=1.0)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in range(4)}
    assert outs == {"[('Zeppelin', 'bus', 'cab', 'car')] [('go', 'hop', 'run', 'walk')]\n"}


def test_extra_training_rules_verbs_and_position(tmp_path):
    from metalens.autointerp import wordnet as W
    from metalens.autointerp.trainset import extra_training_rules

    root = tmp_path / "wn"
    root.mkdir()
    # hit and touch are contact verbs (35), eat is consumption (34, kept for a held-out set), walk is motion (38)
    (root / "cntlist.rev").write_text("hit%2:35:00:: 1 9\ntouch%2:35:00:: 1 9\neat%2:34:00:: 1 9\nwalk%2:38:00:: 1 9\n")
    counts = W.word_counts(["We hit it, touched it, ate and walked."])
    rules = extra_training_rules(counts, ("contact",), True, root, min_seen=2, max_share=1.0)
    assert [(r.name, r.family) for r in rules] == [("wn_verbs_contact", "wn_verbs"), ("after_comma", "position"),
                                                    ("paren_first", "position")]
    toks = ["We", " hit", " it", ",", " touched", " (", "and", " ate", ")", " walking", " hits"]
    verbs, comma, paren = (r.values(toks) for r in rules)
    np.testing.assert_array_equal(verbs, [0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(comma, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(paren, [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    assert rules[0].explanations[0] == "verbs of touching and hitting"
    for held in ("motion", "consumption"):  # the fresh set's and the third set's verb files are refused
        with pytest.raises(ValueError, match=held):
            extra_training_rules(counts, (held,), False, root)
    assert extra_training_rules(counts, (), False, root) == []


def test_fresh_context_rules_by_hand():
    toks = ["The", " cat", " sat", ".", " The", " dog", " saw", " the", " cat", "!", " Cats"]
    # "the" is skipped, "cat" repeats; "Cats" is another word; blocks of 6 tokens forget what came before
    np.testing.assert_array_equal(R.repeated_word(32, ["the"])(toks), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(R.repeated_word(6, ["the"])(toks), np.zeros(11))
    np.testing.assert_array_equal(R.sentence_end(toks), [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(R.sentence_end(["We", " sing", "ing", "."]), [0, 1, 1, 0])
    # a token of whitespace alone (SmolLM2 gives one before digits) ends no sentence
    np.testing.assert_array_equal(R.sentence_end(["We", " met", " ", "5", " times", "."]), [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(R.sentence_start(["We", " met", " ", "5", " times"]), [1, 0, 0, 0, 0])


def test_verb_forms_and_verb_categories(tmp_path):
    from metalens.autointerp import wordnet as W

    assert W.verb_forms("stop") == {"stop", "stops", "stopped", "stopping"}
    assert W.verb_forms("open") == {"open", "opens", "opened", "opening"}
    assert W.verb_forms("move") == {"move", "moves", "moved", "moving"}
    assert W.verb_forms("cry") == {"cry", "cries", "cried", "crying"}
    assert {"went", "gone"} <= W.verb_forms("go", {"go": {"went", "gone"}})
    root = tmp_path / "wn"
    root.mkdir()
    assert W.verb_categories(root, W.word_counts(["x"])) == []  # no WordNet: no categories
    # sense keys: lemma%2:<verb lexfile>:..., counts; walk and run are motion (38), say is communication (32);
    # "fly" is mostly a noun here, "tell" too rare
    (root / "cntlist.rev").write_text("\n".join([
        "walk%2:38:00:: 1 9", "walk%1:04:00:: 1 2", "run%2:38:00:: 1 20", "run%2:33:00:: 2 3", "go%2:38:00:: 1 30",
        "say%2:32:00:: 1 40", "fly%2:38:00:: 1 2", "fly%1:05:00:: 1 9", "tell%2:32:00:: 1 2", "set%2:38:00:: 1 9"]))
    (root / "verb.exc").write_text("went go\nran run\nsaid say\n")
    counts = W.word_counts(["They walked and ran, then went home and said so. Flies fly."])
    cats = W.verb_categories(root, counts, exclude=["set"], min_seen=1, max_share=1.0)
    motion = next(c for c in cats if c.lexfile == "motion")
    assert motion.name == "verbs of movement" and set(motion.seen) == {"walk", "run", "go"}
    assert {"walked", "ran", "running", "went", "goes"} <= motion.words and "fly" not in motion.words
    assert "set" not in motion.words and {c.lexfile for c in cats} == {"motion", "communication"}
    assert W.verb_categories(root, counts, min_seen=4, max_share=1.0) == []


def test_fresh_set_holds_only_families_never_trained(tmp_path):
    from metalens.autointerp.trainset import BuildConfig, build_fresh
    from metalens.io import jsonl_objects

    subj = tiny_llama(seed=3)
    cfg = BuildConfig(window=32, max_tokens=96, windows_per_feature=4, wordnet_dir=str(tmp_path / "no_wordnet"))
    path = build_fresh(tmp_path / "fresh", subj.tokenizer, None, cfg)  # the hand-written sentences only
    lines = [o for _, o in jsonl_objects(path)]
    fams = {o["family"] for o in lines}
    assert fams and all(f.startswith("fresh_") for f in fams) and not fams & set(R.FAMILIES)
    meta = json.loads((tmp_path / "fresh" / "fresh_meta.json").read_text())
    assert {r["name"] for r in meta["rules"]} >= {"fresh_repeats", "fresh_sentence_end"}  # no WordNet: no categories
    assert "fresh_sentence_end" in {o["rule"] for o in lines}  # (words repeat rarely in 32 characters)
    assert all(len(o["windows"]) == 4 and len(o["explanations"]) >= 3 for o in lines)
    assert path.stat().st_mtime == build_fresh(tmp_path / "fresh", subj.tokenizer, None, cfg).stat().st_mtime


def test_third_context_rules_by_hand():
    toks = ["He", ' said', ' "', "Go", " home", '."', " She", ' wrote', " \u201c", "yes", "\u201d", " too", "."]
    # the last word of each quotation: "home" before '."' (a quote joined to a stop), "yes" in curly quotes
    np.testing.assert_array_equal(R.quoted_last(toks), [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    assert R.quoted_last(['"', "open", " never", " closed"]).sum() == 0  # no closing quote: nothing ends
    toks = ["The", " cat", " sat", ".", " The", " cat", " ran", ".", " A", " dog", " sat", " cat", "."]
    # "cat" repeats the sentence before; the third sentence's "sat" is two sentences back; "the" is skipped
    np.testing.assert_array_equal(R.repeated_from_previous(32, ["the"])(toks), [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(R.repeated_from_previous(4, ["the"])(toks), np.zeros(13))  # blocks forget


def test_adjective_categories_by_cluster_first_sense_and_part_of_speech(tmp_path):
    from metalens.autointerp import wordnet as W

    root = tmp_path / "wn"
    root.mkdir()
    assert W.adjective_categories(root, W.word_counts(["big"])) == []  # no WordNet: no categories
    # head "large" (a) with satellites big and huge (s, "&" to the head); head "small" with tiny; "fast" is
    # mostly an adverb; "frozen" is a form of the verb freeze
    (root / "data.adj").write_text("\n".join([
        "  licence header line",
        "00000001 00 a 01 large 0 001 ! 00000004 a 0101 | above average in size",
        "00000002 00 s 02 big 0 huge 0 001 & 00000001 a 0000 | very large",
        "00000003 00 s 02 frozen 0 fast 0 001 & 00000001 a 0000 | odd members",
        "00000004 00 a 01 small(a) 0 001 ! 00000001 a 0101 | below average in size",
        "00000005 00 s 01 tiny 0 001 & 00000004 a 0000 | very small"]) + "\n")
    (root / "index.adj").write_text("\n".join([
        "large a 1 1 ! 1 3 00000001", "big a 2 1 & 2 5 00000002 00000004", "huge a 1 1 & 1 2 00000002",
        "frozen a 1 1 & 1 2 00000003", "fast a 1 1 & 1 1 00000003", "small a 1 1 ! 1 4 00000004",
        "tiny a 1 1 & 1 1 00000005"]) + "\n")
    (root / "index.adv").write_text("fast r 1 0 1 9 00000009\n")
    (root / "index.verb").write_text("freeze v 1 1 @ 1 5 00000010\n")
    (root / "verb.exc").write_text("froze freeze\nfrozen freeze\n")
    (root / "adj.exc").write_text("bigger big\n")
    counts = W.word_counts(["A large, big, bigger and huge dog met a small tiny frozen fast cat. Large."])
    cats = W.adjective_categories(root, counts, min_seen=1, min_count=1, max_share=1.0)
    large = next(c for c in cats if c.name == "large")
    assert large.words == {"large", "big", "bigger", "huge"} and large.seen[0] == "large"
    assert [c.name for c in cats] == ["large", "small"]  # most members seen first
    no_huge = W.adjective_categories(root, counts, exclude=["huge"], min_seen=1, min_count=1, max_share=1.0)
    assert no_huge[0].words == {"large", "big", "bigger"}
    assert W.adjective_categories(root, counts, exclude=["huge"], min_seen=3, min_count=1, max_share=1.0) == []
    assert W.adjective_categories(root, counts, min_seen=1, min_count=100, max_share=1.0) == []


def test_third_set_holds_only_families_never_trained_or_held_out_before(tmp_path):
    from metalens.autointerp.trainset import BuildConfig, build_third
    from metalens.io import jsonl_objects

    subj = tiny_llama(seed=3)
    cfg = BuildConfig(window=32, max_tokens=96, windows_per_feature=4, wordnet_dir=str(tmp_path / "no_wordnet"))
    with pytest.raises(FileNotFoundError, match="tense.csv"):
        build_third(tmp_path / "none", subj.tokenizer, tmp_path / "empty", cfg)
    ao = tmp_path / "ao"
    (ao / "classification_datasets" / "tense").mkdir(parents=True)
    (ao / "classification_datasets" / "tense" / "tense.csv").write_text(
        "sentence,tense\nCats ran.,past\nCats sat.,past\nCats sat.,past\nDogs will run,future\n")  # the repeated line is dropped
    (ao / "latentqa_datasets" / "eval").mkdir(parents=True)
    (ao / "latentqa_datasets" / "eval" / "qa.json").write_text(json.dumps(
        {"p": [["What does the model say?", 'The model says "hello there" to users.'], ["Why?", "It is kind."]]}))
    path = build_third(tmp_path / "third", subj.tokenizer, ao, cfg)
    lines = [o for _, o in jsonl_objects(path)]
    fams = {o["family"] for o in lines}
    assert fams and all(f.startswith("third_") for f in fams) and not fams & set(R.FAMILIES)
    assert {o["rule"] for o in lines} >= {"third_quoted_last", "third_repeat_previous"}  # no WordNet: no categories
    meta = json.loads((tmp_path / "third" / "third_meta.json").read_text())
    assert meta["sources"] == {"tense": 1, "latentqa": 1}  # 3 distinct sentences make one text
    assert path.stat().st_mtime == build_third(tmp_path / "third", subj.tokenizer, ao, cfg).stat().st_mtime


# ---- training, saving, loading ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from metalens.autointerp.train import TrainConfig, train
    from metalens.autointerp.trainset import BuildConfig, build_trainset

    root = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    subj = tiny_llama(seed=3)
    bc = BuildConfig(n_pydoc=30, train_lines_per_rule=1, windows_per_feature=4, window=16, max_tokens=64,
                     wordnet_dir=str(mini_wordnet(root / "wn")), wordnet_texts=4, list_rules=4, list_lines_per_rule=1)
    build_trainset(root / "data", subj.tokenizer, None, bc)
    cfg = TrainConfig(data=str(root / "data"), out=str(root / "sim"), steps=3, batch=2, crop=12, eval_every=2,
                      eval_windows=2, eval_controls=1, first_layer=2, checkpoint_s=0.0)
    final = train(cfg, subj)
    ecfg = TrainConfig(data=str(root / "data"), out=str(root / "exp"), task="explainer", steps=2, batch=2,
                       first_layer=2, checkpoint_s=0.0)
    efinal = train(ecfg, tiny_llama(seed=3))
    return root, final, efinal, cfg


def test_trainset_holds_out_whole_families(trained):
    root, *_ = trained
    train_fams = {json.loads(ln)["family"] for ln in (root / "data" / "train.jsonl").read_text().splitlines()}
    held = {json.loads(ln)["family"] for ln in (root / "data" / "heldout.jsonl").read_text().splitlines()}
    assert held and train_fams and not (held & train_fams)
    assert "lists" in train_fams  # listed-word rules are training rules only
    seen = {json.loads(ln)["family"] for ln in (root / "data" / "seen_newtext.jsonl").read_text().splitlines()}
    assert "lists" not in seen


def test_training_windows_carry_a_contrast_rule_of_another_family(trained):
    from metalens.autointerp.train import load_windows

    root, *_ = trained
    rules = by_name()
    lines = [json.loads(ln) for ln in (root / "data" / "train.jsonl").read_text().splitlines()]
    n = 0
    for ln in lines:
        for w in ln["windows"]:
            c = w["contrast"]
            if c["rule"] not in rules:  # a listed-word rule
                assert c["rule"].startswith("list_") and ln["family"] != "lists"
                continue
            other = rules[c["rule"]]
            assert other.family != ln["family"] and c["explanations"] == list(other.explanations)
            assert len(c["values"]) == len(w["tokens"]) and max(c["values"]) <= c["scale"]
            if other.family in ("orthography",):  # per-token rules: the window alone gives the same values
                np.testing.assert_allclose(c["values"], other.values(w["tokens"]), atol=1e-4)
                n += 1
    assert n > 0
    assert len(load_windows(root / "data" / "train.jsonl")) == 2 * len(load_windows(root / "data" / "train.jsonl", False))
    assert "contrast" not in json.loads((root / "data" / "heldout.jsonl").read_text().splitlines()[0])["windows"][0]


def test_train_save_load_simulate_and_resume(trained):
    from metalens.autointerp.train import TrainConfig, train

    root, final, _, cfg = trained
    cfg_json = json.loads((final / "adapter.json").read_text())
    assert cfg_json["steps"] == 3 and (final / "adapter.safetensors").stat().st_size > 0
    from safetensors.torch import load_file

    w = load_file(str(final / "adapter.safetensors"))
    assert w and all(t.dtype == torch.float16 for t in w.values())
    assert all(int(n.split("layers.")[1].split(".")[0]) >= 2 for n in w)  # only the trained layers are shipped
    base = tiny_llama(seed=3)
    sim = TrainedSimulator.load(base, final)
    a = sim.simulate("months", [["in", " May"]])[0]
    b = TrainedSimulator(base.model, base.tokenizer).simulate("months", [["in", " May"]])[0]
    assert a.shape == (2,) and not np.allclose(a, b)  # the adapter changed the predictions
    np.testing.assert_allclose(TrainedSimulator.load(base, final).simulate("months", [["in", " May"]])[0], a)
    curve = [json.loads(ln) for ln in (root / "sim" / "curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve if "auroc" in c] == [0, 2]
    # resume: more steps continue from the checkpoint (step 3), not from scratch
    state = json.loads((root / "sim" / "ckpt" / "state.json").read_text())
    assert state["step"] == 3 and state["adam_steps"]
    again = train(TrainConfig(**{**cfg.__dict__, "steps": 4}), tiny_llama(seed=3))
    assert json.loads((again / "adapter.json").read_text())["steps"] == 4
    curve = [json.loads(ln) for ln in (root / "sim" / "curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve if "auroc" in c] == [0, 2, 4]  # continued at 3; step 0 not evaluated again
    with pytest.raises(ValueError, match="different config"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 0.5}), tiny_llama(seed=3))
    # --init: a run starting from a finished adapter holds its tensors before any step
    init = train(TrainConfig(**{**cfg.__dict__, "out": str(root / "init"), "init": str(final), "steps": 0,
                                "eval_every": 0}), tiny_llama(seed=3))
    a, b = load_file(str(final / "adapter.safetensors")), load_file(str(init / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="rank"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(root / "init2"), "init": str(final), "rank": 4}),
              tiny_llama(seed=3))
    # a run may train more layers than its init (the new ones start at zero B), never fewer
    deeper = train(TrainConfig(**{**cfg.__dict__, "out": str(root / "init3"), "init": str(final), "steps": 0,
                                  "eval_every": 0, "first_layer": 1}), tiny_llama(seed=3))
    c = load_file(str(deeper / "adapter.safetensors"))
    assert set(a) < set(c) and all(torch.equal(a[k], c[k]) for k in a)
    assert all(not c[k].any() for k in set(c) - set(a) if "lora_B" in k)
    with pytest.raises(ValueError, match="first layer"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(root / "init4"), "init": str(final), "first_layer": 3}),
              tiny_llama(seed=3))


def test_parse_examples_by_hand():
    from metalens.autointerp.simulator import parse_examples, with_examples

    assert parse_examples(" USA, Canada, usa, UK.\nExamples of x: a, b") == ["USA", "Canada", "UK"]
    assert parse_examples(" dog, cat, bird, fish, mouse, rabbit", n=3) == ["dog", "cat", "bird"]
    assert parse_examples(' "The capital of France is Paris"') == []  # a quote, not a list
    assert parse_examples(" 12") == []  # one item is not a list
    assert with_examples("animals", ["dog", "cat"]) == "animals (dog, cat)" and with_examples("x", []) == "x"


def test_example_texts_batched_equal_one_at_a_time():
    from metalens.autointerp.simulator import example_texts

    base = tiny_llama(seed=3)
    es = ["months", "names of countries", "a"]
    one = [example_texts(base.model, base.tokenizer, [e], max_tokens=6)[0] for e in es]
    assert example_texts(base.model, base.tokenizer, es, max_tokens=6) == one
    assert any(one)


def test_example_texts_stop_at_the_first_newline_with_the_same_first_line():
    from metalens.autointerp.simulator import EXAMPLES_PROMPT, example_texts

    base = tiny_llama(seed=4)
    tok, m = base.tokenizer, base.model
    nl = tok("\n", add_special_tokens=False)["input_ids"][-1]
    w = m.get_output_embeddings().weight.detach().clone()  # untie the head, then point its newline row
    m.lm_head, m.config.tie_word_embeddings = torch.nn.Linear(w.shape[1], w.shape[0], bias=False), False
    ids = tok(EXAMPLES_PROMPT.format(explanation="a"), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # along a last hidden state, so the random model writes newlines now and then
        h = m.model(ids).last_hidden_state[0, -1]
        w[nl] = h / h.norm() ** 2 * (w @ h).max()
        m.lm_head.weight.copy_(w)
    es = ["months", "names of countries", "a", "tools", "verbs"]
    full = []
    for e in es:  # plain greedy generate, no stop: the reference
        ids = tok(EXAMPLES_PROMPT.format(explanation=e), return_tensors="pt", add_special_tokens=False)["input_ids"]
        g = base.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        full.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    assert any("\n" in f and f.split("\n")[0] for f in full)  # some row writes a line, then goes on
    assert example_texts(base.model, tok, es, max_tokens=12) == [f.split("\n")[0] for f in full]


def test_train_with_examples_writes_them_and_the_adapter_reads_with_them(trained):
    from metalens.autointerp.simulator import example_words, with_examples
    from metalens.autointerp.train import TrainConfig, load_windows, train

    root, _, _, cfg = trained
    final = train(TrainConfig(**{**cfg.__dict__, "out": str(root / "simex"), "examples": 0.5, "steps": 2}),
                  tiny_llama(seed=3))
    ex = json.loads((root / "data" / "examples.json").read_text())
    assert {e for d in load_windows(root / "data" / "train.jsonl") for e in d[0]} <= set(ex)
    assert json.loads((final / "adapter.json").read_text())["examples"] is True
    base = tiny_llama(seed=3)
    sim = TrainedSimulator.load(base, final)
    assert sim.name.endswith("+examples/select-plain")
    words = ["May", "June"]
    sim.examples["months"] = words  # the cache: read as "months (May, June)"
    plain = TrainedSimulator.load(base, final, examples=False)
    np.testing.assert_allclose(sim.simulate("months", [["in", " May"]])[0],
                               plain.simulate(with_examples("months", words), [["in", " May"]])[0])
    sim.simulate("names of countries", [["in", " May"]])  # a miss is written by the base model
    assert sim.examples["names of countries"] == example_words(base.model, base.tokenizer, ["names of countries"])[0]


def test_trained_explainer_explains_and_selects(trained):
    from metalens.autointerp.explainer import TrainedExplainer, explainer_prompt, Shown, select

    root, final, efinal, _ = trained
    base = tiny_llama(seed=3)
    ex = TrainedExplainer.load(base, efinal)
    wins = [(["in", " May"], [0.0, 2.0]), (["the", " end"], [0.0, 0.0])]
    cands = ex.explain(wins, k=3, max_tokens=6)
    assert 1 <= len(cands) <= 3 and all(isinstance(c, str) and c for c in cands)
    best, rs = select(TrainedSimulator.load(base, final), cands, wins)
    assert best is not None and len(rs) == len(cands)
    p = explainer_prompt([Shown(["in", " May"], np.array([0.0, 2.0])), Shown(["the"], np.array([0.0]))])
    assert "Text: in<< May>>" in p and "Quiet: the" in p and p.endswith("Explanation:")
    # the examples candidate is one of the k, last; without it all k are generated
    assert ex.explain(wins, k=3, max_tokens=6)[-1] == "words like May"
    assert "words like May" not in TrainedExplainer.load(base, efinal, examples=False).explain(wins, k=3, max_tokens=6)


def test_category_candidate_sits_before_the_examples_phrase(trained):
    from metalens.autointerp.explainer import TrainedExplainer, category_phrase

    _, _, efinal, _ = trained
    base = tiny_llama(seed=3)
    wins = [(["in", " May", " and", " June"], [0.0, 2.0, 0.0, 1.5]), (["the", " end"], [0.0, 0.0])]
    ex = TrainedExplainer.load(base, efinal)
    assert ex.namer is base.model  # the base model, not the merged copy, names the examples
    name = category_phrase(base.model, base.tokenizer, ["May", "June"])
    cands = ex.explain(wins, k=4, max_tokens=6)
    assert len(cands) <= 4 and cands[-1] == "words like May or June"
    assert (name is None) or (cands[-2] == name) or name.lower() in [c.lower() for c in cands[:-2]]
    assert category_phrase(base.model, base.tokenizer, ["May"]) is None  # one word names no category
    assert category_phrase(base.model, base.tokenizer, ["(", ")"]) is None
    no_name = TrainedExplainer.load(base, efinal, category=False)
    assert no_name.namer is None and no_name.explain(wins, k=4, max_tokens=6)[-1] == "words like May or June"


def test_category_phrase_names_what_words_share_on_the_real_model(real):
    from metalens.autointerp.explainer import category_phrase

    assert category_phrase(real.model, real.tokenizer, ["car", "bus", "train"]) == "transportation"
    assert category_phrase(real.model, real.tokenizer, ["mother", "brother", "uncle"]) == "family"
    assert category_phrase(real.model, real.tokenizer, ["Vietnam", "Canada"]) is None  # it answers "Canada": a copy


def test_examples_phrase_names_the_strongest_words_by_hand():
    from metalens.autointerp.explainer import examples_phrase

    wins = [([" in", " France", " and", " Jap", "an"], [0, 3, 0, 2, 1]), ([" Peru", ".", " peru"], [1.6, 0, 0.5])]
    assert examples_phrase(wins) == "words like France, Japan or Peru"  # whole words, strongest first
    assert examples_phrase(wins, n=2) == "words like France or Japan"
    assert examples_phrase([([" (", "1998", ")"], [1, 0, 1])]) == "the tokens ( or )"
    assert examples_phrase([([" x"], [0])]) is None


def hf_generate_texts(model, tok, ids, k, temperature, max_tokens, seed):
    """What the explainer generated before generate_lines: HF generate, greedy then k - 1 seeded samples."""
    kw = dict(max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, attention_mask=torch.ones_like(ids))
    outs = model.generate(ids, do_sample=False, **kw)[:, ids.shape[1]:].tolist()
    if k > 1:
        torch.manual_seed(seed)
        outs += model.generate(ids, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                               num_return_sequences=k - 1, **kw)[:, ids.shape[1]:].tolist()
    return [tok.decode(o, skip_special_tokens=True) for o in outs]


def test_generate_lines_stops_at_the_line_end_with_the_same_explanations_as_hf_generate():
    from metalens.autointerp.explainer import clean, generate_lines

    subj = tiny_llama(seed=5)
    tok, model = subj.tokenizer, subj.model
    ids = tok("Text: the <<cat>> sat\nExplanation:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # make "\n" likely, so lines end early, some after leading newlines
        h = model.model(input_ids=ids).last_hidden_state[0].mean(0)
        model.get_output_embeddings().weight[newline] += 6 * h / h.norm() ** 2
    for k in (1, 8):
        old = hf_generate_texts(model, tok, ids, k, 1.0, 16, seed=0)
        new = generate_lines(model, tok, ids, k, 1.0, 16, seed=0)
        assert len(new) == k
        assert all(o.startswith(n) and clean(o) == clean(n) for o, n in zip(old, new))
    cut = [n for o, n in zip(old, new) if len(n) < len(o)]
    assert len(cut) >= 5 and any(n.startswith("\n") and n.strip() for n in cut)  # stopped; a leading newline did not


# ---- store-free JSONL formats ------------------------------------------------------------------------------
def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_simulate_format_round_trip(tiny, tmp_path):
    sim = TrainedSimulator(tiny.model, tiny.tokenizer)
    f = write(tmp_path / "f.jsonl", [
        {"id": "a", "explanation": "months", "windows": [{"tokens": ["in", " May"], "values": [0, 3]},
                                                         {"tokens": ["x"], "values": [1]}]},
        {"id": 7, "explanation": "months", "windows": [{"tokens": ["in", " May"]}]},
        {"id": "c", "explanation": "months", "windows": [{"tokens": ["a", "b"], "values": [2, 2]}]},
    ])
    out = simulate_file(f, sim)
    assert [o["id"] for o in out] == ["a", 7, "c"]
    assert [len(p) for p in out[0]["predictions"]] == [2, 1] and isinstance(out[0]["r"], float)
    np.testing.assert_allclose(out[1]["predictions"][0], out[0]["predictions"][0], atol=1e-4)
    assert out[1]["r"] is None and "no values" in out[1]["reason"]
    assert out[2]["r"] is None and "constant" in out[2]["reason"]
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("bad,msg", [
    ("{not json", "not valid JSON"),
    ('{"explanation": "x", "windows": [{"tokens": ["a"]}]}', "id"),
    ('{"id": 1, "explanation": "", "windows": [{"tokens": ["a"]}]}', "explanation"),
    ('{"id": 1, "explanation": "x", "windows": [{"tokens": ["a"], "values": [1, 2]}]}', "values"),
    ('{"id": 1, "explanation": "x", "windows": [{"tokens": [3]}]}', "tokens"),
])
def test_simulate_format_rejects_bad_lines_naming_file_line(tiny, tmp_path, bad, msg):
    good = {"id": 0, "explanation": "x", "windows": [{"tokens": ["a"]}]}
    f = write(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{msg}"):
        simulate_file(f, TrainedSimulator(tiny.model, tiny.tokenizer))


class FixedExplainer:
    name = "fixed"

    def explain(self, windows, k=8, seed=0):
        return ["months", "colours"][:k]


def test_explain_format_splits_and_scores(tiny, tmp_path):
    sim = TrainedSimulator(tiny.model, tiny.tokenizer)
    wins = [{"tokens": ["in", " May", " now"], "values": [0, v, 0]} for v in (5, 4, 3, 2, 1)]
    wins += [{"tokens": ["a", "b"], "values": [0, 0]}] * 3
    f = write(tmp_path / "e.jsonl", [{"id": "f1", "windows": wins},
                                     {"id": "f2", "windows": [{"tokens": ["a"], "values": [0]}]}])
    out = explain_file(f, FixedExplainer(), sim, k=2)
    assert out[0]["split"] == split_windows([(w["tokens"], w["values"]) for w in wins])
    # ranked activating windows 0..4 go explain, select, test in turn; then the quiet ones 5..7
    assert out[0]["split"] == {"explain": [0, 3, 5], "select": [1, 4, 6], "test": [2, 7]}
    assert out[0]["explanation"] in ("months", "colours") and len(out[0]["candidates"]) == 2
    assert out[1]["explanation"] is None and out[1]["score"] is None and "no window" in out[1]["reason"]
    with pytest.raises(DataError, match="e2.jsonl:1: .*values"):
        explain_file(write(tmp_path / "e2.jsonl", [{"id": 1, "windows": [{"tokens": ["a"]}]}]), FixedExplainer(), sim)


# ---- undefined scores are None with a reason, left out of averages ---------------------------------------
class ConstSim:
    name = "const"

    def simulate(self, explanation, windows):
        return [np.full(len(w), 3.0) for w in windows]


def test_simulation_score_is_undefined_not_zero_for_constant_predictions():
    w = Window(["in", " May"], np.array([0.0, 2.0]), 0, 0)
    s = simulation_score(ConstSim(), "months", [w], [w])
    assert s["all"] is None and "constant" in s["all_reason"]  # was 0.0


def test_detection_auroc_is_undefined_without_negatives(tiny):
    from metalens.autointerp.llm import LocalLLM

    w = Window(["in", " May"], np.array([0.0, 2.0]), 0, 0)
    d = detection_score(LocalLLM(tiny), "months", [w], [], yes_no=("Y", "N"))
    assert d["auroc"] is None and d["reason"] == "no negative examples"  # was 0.5


def test_summary_leaves_undefined_scores_out():
    from metalens.autointerp.search import summary

    res = {"a": {"text": "x", "test": {"simulation": {"all": 0.6}, "detection": {"auroc": None}}},
           "b": {"text": "y", "test": {"simulation": {"all": None}, "detection": {"auroc": 0.8}}}}
    s = summary(res)
    assert s["simulation"] == pytest.approx(0.6) and s["detection_auroc"] == pytest.approx(0.8)
    assert s["undefined"]["simulation"] == 1 and s["undefined"]["detection_auroc"] == 1


def test_dense_feature_gets_negatives_by_quantile():
    rng = np.random.default_rng(0)
    wins = [Window([f"t{j}" for j in range(4)], 0.5 + rng.random(4), t, 0) for t in range(80)]  # always > 0
    sets = make_examples(wins, ExampleConfig(n_negative=3))
    assert all(isinstance(s, ExampleSet) for s in sets.values())
    assert all(s.threshold > 0 and s.negative for s in sets.values())  # was: no negatives at all
    for s in sets.values():
        assert all(w.max <= s.threshold for w in s.negative) and all(w.max > s.threshold for w in s.top)


def test_cli_simulate_and_explain_windows(tiny, tmp_path):
    from typer.testing import CliRunner

    from metalens.cli import app

    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    wins = [{"tokens": ["in", " May"], "values": [0, v]} for v in (3, 2, 1, 1)] + [{"tokens": ["a"], "values": [0]}] * 3
    data = write(tmp_path / "s.jsonl", [{"id": "m", "explanation": "months", "windows": wins}])
    common = ["--model", str(tmp_path / "model"), "--device", "cpu", "--json"]
    r = CliRunner().invoke(app, ["simulate", "--data", str(data), "--simulator", "prompt", *common])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [len(p) for p in out["features"][0]["predictions"]] == [2, 2, 2, 2, 1, 1, 1]
    r = CliRunner().invoke(app, ["explain", "--windows", str(data), "--k", "2", *common])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["features"][0]
    assert row["id"] == "m" and set(row["split"]) == {"explain", "select", "test"}
    bad = write(tmp_path / "bad.jsonl", ['{"id": "m", "windows": []}'])
    r = CliRunner().invoke(app, ["simulate", "--data", str(bad), *common])
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output


@pytest.mark.integration
def test_shipped_adapters_on_the_default_model(real):
    from metalens.autointerp.explainer import explainer_from
    from metalens.autointerp.simulator import simulator_from

    sim = simulator_from("default", real)
    assert sim.name == "trained:simulator+examples/select-plain"  # adapter.json: examples on, plain selection
    toks = ["We", " met", " in", " January", " and", " again", " in", " May", "."]
    months = sim.simulate("months of the year", [toks])[0]
    punct = sim.simulate("punctuation", [toks])[0]
    others = np.delete(months, [3, 7])
    assert months[[3, 7]].min() > 1 and months[[3, 7]].min() > 10 * others.max()  # January, May; nothing else
    assert punct[8] > punct[3] and punct[8] > punct[7]  # the full stop, not the months
    found = explainer_from("default", real).explain([(toks, [0, 0, 0, 1, 0, 0, 0, 1, 0])], k=3)
    assert found and any("month" in f.lower() for f in found)


def test_split_gives_the_explainer_only_what_it_shows():
    # 12 activating windows (window i peaks at 12 - i) and 5 quiet ones
    wins = [(["a"], [12.0 - i]) for i in range(12)] + [(["b"], [0.0])] * 5
    parts = split_windows(wins)
    assert parts["explain"] == [0, 3, 6, 12]  # 3 activating in turn, then 1 quiet
    assert parts["select"] == [1, 4, 7, 9, 11, 13, 15] and parts["test"] == [2, 5, 8, 10, 14, 16]
    assert sorted(sum(parts.values(), [])) == list(range(17))


def test_examples_reading_scores_and_the_plain_reading_selects(trained):
    from metalens.autointerp.explainer import simulation_r
    from metalens.autointerp.formats import explain_one, split_windows

    _, final, _, _ = trained
    base = tiny_llama(seed=3)
    sim = TrainedSimulator.load(base, final, examples=True)
    assert sim.select_plain and sim.name.endswith("+examples/select-plain")
    plain = sim.selector()
    assert plain is sim.selector() and plain.examples is None and plain.model is sim.model
    assert TrainedSimulator.load(base, final, examples=True, select_plain=False).selector().examples == {}
    assert TrainedSimulator.load(base, final).selector().examples is None  # plain: selects itself
    sim.examples.update({"months": ["May", "June"], "colours": ["red", "blue"]})  # no base-model writing
    wins = [(["in", " May", " and", " June"], [0.0, float(v), 0.0, v / 2]) for v in (5, 4, 3, 2, 1, 6)]
    wins += [(["the", " end", " of", " it"], [0.0] * 4)] * 4
    row = explain_one("f", wins, FixedExplainer(), sim, k=2)
    parts = split_windows(wins)
    sel = [wins[i] for i in parts["select"]]
    assert [c["select_r"] for c in row["candidates"]] == pytest.approx(
        [simulation_r(plain, c, sel) for c in ("months", "colours")], abs=1e-4)
    test = [wins[i] for i in parts["test"]]
    assert row["score"] == pytest.approx(simulation_r(sim, row["explanation"], test), abs=1e-4)
    assert abs(row["score"] - simulation_r(plain, row["explanation"], test)) > 1e-3  # the examples reading scores
