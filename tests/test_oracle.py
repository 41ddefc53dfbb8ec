"""Activation oracles on a tiny random Llama: injection math, adapter-off reads, train/save/load/ask, eval, JSONL errors."""

import json

import numpy as np
import pytest

from metalens.errors import DataError
import torch

from metalens.capture import capture
from metalens.oracle import Example, Oracle, OracleDataError, load_jsonl, save_jsonl
from metalens.adapters import add_lora
from metalens.oracle.inject import Projection, encode, inject, norm_matched_add, prompt_ids, read_vectors
from metalens.capture import read_span
from metalens.oracle.tasks import context_prediction_examples
from metalens.testing import tiny_llama

SETTINGS = dict(model=None, layers=[2], inject_layer=1, inject="add", scale=1.0, system="", d_subject=64)


def _block1_out(model, ids, mask=None, vectors=None, mode="add", projection=None):
    seen = {}
    # the input of block 2 is the (possibly edited) output of block 1
    h = model.model.layers[2].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("h", (a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True)
    try:
        if vectors is None:
            model(input_ids=ids)
        else:
            with inject(model, vectors, mask, layer=1, mode=mode, projection=projection):
                model(input_ids=ids)
    finally:
        h.remove()
    return seen["h"]  # [batch, seq, d]


def test_norm_matched_addition_changes_only_placeholders_by_their_norm(tiny):
    tok = tiny.tokenizer
    ids, slots = prompt_ids(tok, 2, 3, "What is here?")
    batch = encode(tok, [(ids, slots)])
    assert batch.slot_mask[0].nonzero().flatten().tolist() == slots
    v = torch.randn(3, tiny.d_model) * 7
    before = _block1_out(tiny.model, batch.input_ids)
    after = _block1_out(tiny.model, batch.input_ids, batch.slot_mask, v)
    diff = (after - before)[0]  # [seq, d]
    others = [i for i in range(diff.shape[0]) if i not in slots]
    assert torch.allclose(diff[others], torch.zeros_like(diff[others]))
    h = before[0, slots]  # [3, d]
    # the added vector points along v and has exactly |h| as its norm
    assert torch.allclose(diff[slots].norm(dim=-1), h.norm(dim=-1), rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity(diff[slots], v, dim=-1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-4)
    assert torch.allclose(norm_matched_add(h, v), after[0, slots], atol=1e-5)
    # replace mode writes v itself; a projection maps a different width first
    rep = _block1_out(tiny.model, batch.input_ids, batch.slot_mask, v, mode="replace")
    assert torch.allclose(rep[0, slots], v, atol=1e-5)
    proj = Projection(32, tiny.d_model)
    w = torch.randn(3, 32)
    rep = _block1_out(tiny.model, batch.input_ids, batch.slot_mask, w, mode="replace", projection=proj)
    assert torch.allclose(rep[0, slots], proj(w), atol=1e-5)
    with pytest.raises(ValueError, match="placeholder"):
        with inject(tiny.model, v[:2], batch.slot_mask):
            pass


def test_subject_reads_with_adapter_disabled_equal_base_model():
    s = tiny_llama(seed=3)
    texts = ["hello there, world", "a b c d e f"]
    base = capture(s, texts, ["resid.2"], add_special_tokens=False)["resid.2"]
    peft_model = add_lora(s.model, 4)
    for n, p in peft_model.named_parameters():  # make the adapter matter
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    with peft_model.disable_adapter():
        off = capture(s, texts, ["resid.2"], add_special_tokens=False)["resid.2"]
    on = capture(s, texts, ["resid.2"], add_special_tokens=False)["resid.2"]
    assert torch.equal(base, off)
    assert not torch.allclose(base, on)
    ex = [Example(t, "q", read=(1, 3)) for t in texts]
    with peft_model.disable_adapter():
        vecs = read_vectors(s, ex, [2, 2])
    assert torch.equal(vecs[0], base[1:3])


def test_read_slices_and_system_mask(tiny):
    assert read_span("all", 5) == slice(0, 5) and read_span("last", 5) == slice(4, 5)
    assert read_span((-2, None), 5) == slice(3, 5) and read_span("all", 5, 2) == slice(2, 5)
    with pytest.raises(DataError, match="selects no tokens"):
        read_span((4, 2), 5)
    msgs = [{"role": "system", "content": "SECRET"}, {"role": "user", "content": "hi"}]
    vecs = read_vectors(tiny, [Example(msgs, "q", read="all")], [1])
    n = lambda m: len(tiny.tokenizer(tiny.tokenizer.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"])  # noqa: E731
    assert vecs[0].shape[0] == n(msgs) - n(msgs[:1]) == n([msgs[1]])  # the system message's tokens are never read


def test_bad_jsonl_names_the_line(tmp_path):
    f = tmp_path / "x.jsonl"
    good = {"context": "The cat sat.", "read": "last", "question": "Is it plural?", "answer": "No", "choices": ["Yes", "No"], "task": "t"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "question"}) + "\n")
    with pytest.raises(OracleDataError, match=r"x.jsonl:2: missing field 'question'"):
        load_jsonl(f)
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "read": 3}) + "\n")
    with pytest.raises(OracleDataError, match=r"x.jsonl:3: 'read' must be"):
        load_jsonl(f)
    f.write_text(json.dumps({**good, "answer": 1}) + "\n")
    with pytest.raises(OracleDataError, match=r"x.jsonl:1: 'answer' must be a string"):
        load_jsonl(f)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: not valid JSON"):
        load_jsonl(f)
    f.write_text(json.dumps({**good, "read": [0, 2]}) + "\n")
    ex = load_jsonl(f)[0]
    assert ex.read == (0, 2) and ex.choices == ("Yes", "No")
    save_jsonl([ex], tmp_path / "y.jsonl")
    assert load_jsonl(tmp_path / "y.jsonl") == [ex]


def test_context_prediction_examples_point_at_the_right_tokens(tiny):
    exs = context_prediction_examples(["The quick brown fox jumps over the lazy dog."] * 3, tiny.tokenizer, 20, seed=1)
    assert len(exs) == 20
    for e in exs:
        ids = tiny.tokenizer(e.context, add_special_tokens=False)["input_ids"]
        if e.task == "context_here":
            assert tiny.tokenizer.decode(ids[slice(*e.read)]).strip() == e.answer
        assert e.read[1] == len(ids)  # the context ends at the last read token


def test_train_save_load_ask_and_resume(tmp_path, monkeypatch):
    from metalens.oracle import ask as ask_mod
    from metalens.oracle.train import RECIPES, train

    data = tmp_path / "ao"
    _tiny_data(data)
    cfg = RECIPES["tiny"].__class__.from_json({**RECIPES["tiny"].__dict__, "data_dir": str(data), "max_steps": 3})
    s = tiny_llama(seed=1)
    before = {n: p.clone() for n, p in s.model.named_parameters()}
    ckpt = train(cfg, tmp_path / "run", subject=s, progress=False)
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["step"] == 3 and "optimizer" in state and state["cursor"] > 0
    curve = [json.loads(l) for l in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == 3 and "eval_context_loss" in curve[-1]
    lora = {n: p for n, p in s.model.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # LoRA B starts at zero: it trained
    assert all(torch.equal(p, before[n.replace("base_layer.", "")]) for n, p in s.model.named_parameters()
               if "lora" not in n and n.replace("base_layer.", "") in before)

    monkeypatch.setattr(ask_mod, "load_subject", lambda *a, **k: tiny_llama(seed=1))
    o = Oracle.load(tmp_path / "run")
    ans = o.ask("The cat sat on the mat.", "Is this about an animal?", read="all", choices=["Yes", "No"], max_new_tokens=4)
    assert ans.layer == o.layers[0] and ans.n_vectors == len("The cat sat on the mat.")
    assert abs(sum(ans.probs.values()) - 1) < 1e-4 and set(ans.probs) == {"Yes", "No"}
    # the reloaded adapter is the trained one: its loss equals the in-memory oracle's
    exs = load_jsonl(tmp_path / "run" / "data" / "eval_context.jsonl")[:4]
    o2 = Oracle(s, None, o.settings)  # s still carries the trained adapter (enabled)
    with torch.no_grad():
        assert torch.allclose(o.loss(exs, [2] * 4), o2.loss(exs, [2] * 4), atol=1e-4)
        # saved in float16 it reloads to (nearly) the same oracle
        o.save(tmp_path / "half", dtype=torch.float16)
        o3 = Oracle.load(tmp_path / "half")
        assert torch.allclose(o.loss(exs, [2] * 4), o3.loss(exs, [2] * 4), atol=1e-2)

    # resume: continues from step 3 to 5 with the saved config, even when killed mid-swap
    # (the last checkpoint moved to ckpt.old and the new one not yet in place)
    (tmp_path / "run" / "ckpt").rename(tmp_path / "run" / "ckpt.old")
    more = cfg.__class__.from_json({**cfg.__dict__, "max_steps": 5})
    monkeypatch.setattr("metalens.oracle.train.load_subject", lambda *a, **k: tiny_llama(seed=1))
    ckpt = train(more, tmp_path / "run", resume=True, progress=False)
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] == 5
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]



def test_eval_on_small_jsonl(tmp_path):
    from metalens.oracle.evaluate import evaluate

    s = tiny_llama(seed=2)
    o = Oracle(s, add_lora(s.model, 4), SETTINGS)
    words = ["cat", "dog", "sun", "car", "tree", "fish"]
    exs = [Example(f"the {w} {'and the ' + w if i % 2 else ''}.", "Is it plural?", "Yes" if i % 2 else "No", "all",
                   ("Yes", "No"), "plural" if i < 12 else "other") for i, w in enumerate(words * 4)]
    f = tmp_path / "e.jsonl"
    save_jsonl(exs, f)
    rep = evaluate(o, load_jsonl(f), ["untrained", "probe", "blackbox", "text"])
    assert set(rep["methods"]) == {"oracle", "untrained", "probe", "blackbox", "text"}
    assert set(rep["tasks"]) == {"plural", "other"} and rep["n"] == 24
    # the probe separates this trivially linear split (length differs), so it must score high
    assert rep["overall"]["probe"]["auroc"] > 0.9
    # the oracle's numbers are the metrics of its own P(first choice) on the same items
    from metalens.metrics import auroc

    p = o.choice_probs(exs, [rep["layer"]] * len(exs))[:, 0].numpy()
    y = [int(e.answer == e.choices[0]) for e in exs]
    assert rep["overall"]["oracle"]["acc"] == pytest.approx(round(float(((p > 0.5) == np.array(y)).mean()), 4))
    assert rep["overall"]["oracle"]["auroc"] == pytest.approx(round(auroc(p, y), 4))


def _relations(root):
    rel = root / "classification_datasets" / "relations" / "factual"
    rel.mkdir(parents=True)
    sports = ["golf", "tennis", "chess"]
    (rel / "person_plays_sport.json").write_text(json.dumps(dict(
        name="person sport", prompt_templates=["{} plays the sport of"], properties=dict(domain_name="person"),
        samples=[dict(subject=f"Player {i}", object=sports[i % 3]) for i in range(30)])))
    (rel / "country_capital.json").write_text(json.dumps(dict(
        name="capital", prompt_templates=["The capital of {} is"], properties=dict(domain_name="country"),
        samples=[dict(subject=f"Land {i}", object=f"City {i}") for i in range(30)])))


def test_relation_and_mention_examples_are_balanced_and_right(tmp_path, tiny):
    from metalens.oracle.tasks import mention_examples, relation_examples

    _relations(tmp_path)
    exs = relation_examples(tmp_path, 200, seed=3)
    assert len(exs) == 200 and sum(e.answer == "Yes" for e in exs) == 100
    truth = {f"Player {i}": ["golf", "tennis", "chess"][i % 3] for i in range(30)}
    for e in exs:
        subject = e.context.removesuffix(" plays the sport of").removeprefix("The capital of ").removesuffix(" is")
        concept = e.question.split(" a ")[-1].rstrip("?") if e.task == "relations_domain" else None
        if e.task == "relations_domain":
            assert (concept == ("person" if subject.startswith("Player") else "country")) == (e.answer == "Yes")
        else:  # answer questions only for the categorical relation (3 objects), never for 30 distinct capitals
            assert e.task == "relations_answer" and subject in truth
            assert (truth[subject] in e.question) == (e.answer == "Yes")
    subjects = lambda split: {e.context for e in relation_examples(tmp_path, 200, seed=3, split=split)}  # noqa: E731
    assert not subjects("train") & subjects("test")  # disjoint samples
    (tmp_path / "classification_datasets" / "relations" / "factual" / "bad.json").write_text("[1, 2]")
    with pytest.raises(OracleDataError, match="bad.json"):
        relation_examples(tmp_path, 10)

    texts = ["The quick brown fox jumps over the lazy dog.", "A green parrot sings songs every morning."]
    exs = mention_examples(texts, tiny.tokenizer, 30, seed=1, n_read=3)
    assert len(exs) == 30 and sum(e.answer == "Yes" for e in exs) == 15
    for e in exs:
        word = e.question.split("'")[1]
        ids = tiny.tokenizer(e.context, add_special_tokens=False)["input_ids"]
        tail = tiny.tokenizer.decode(ids[slice(*e.read)])
        assert (word in tail) if e.answer == "Yes" else (word.lower() not in e.context.lower())


def test_init_adapter_starts_from_saved_weights(tmp_path):
    from metalens.oracle.train import RECIPES, OracleConfig, train

    data = tmp_path / "ao"
    _tiny_data(data)
    base = {**RECIPES["tiny"].__dict__, "data_dir": str(data), "eval_at_start": False}
    s = tiny_llama(seed=1)
    first = train(OracleConfig.from_json({**base, "max_steps": 2}), tmp_path / "a", subject=s, progress=False)
    saved = {n: p.detach().clone() for n, p in s.model.named_parameters() if "lora" in n}
    # zero steps from the saved adapter: the new run's checkpoint holds exactly the saved weights
    second = train(OracleConfig.from_json({**base, "max_steps": 0, "init_adapter": str(first)}), tmp_path / "b",
                   subject=tiny_llama(seed=1), progress=False)
    from safetensors.torch import load_file

    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # the first run trained (B starts at 0)
    with pytest.raises(OracleDataError, match="init_adapter"):
        train(OracleConfig.from_json({**base, "init_adapter": str(tmp_path)}), tmp_path / "c", subject=tiny_llama(seed=1),
              progress=False)


def _tiny_data(root):
    cls = root / "classification_datasets"
    (cls / "tense").mkdir(parents=True)
    (cls / "singular_plural").mkdir(parents=True)
    rows = ["sentence,tense"] + [f"Yesterday I walk{'ed' if i % 2 else ''} home number {i},{'past' if i % 2 else 'present'}" for i in range(20)]
    (cls / "tense" / "tense.csv").write_text("\n".join(rows))
    rows = ["sentence,n_subjects"] + [f"{'Ann and Bo' if i % 2 else 'Ann'} went out at night {i},{'multiple' if i % 2 else 'single'}" for i in range(20)]
    (cls / "singular_plural" / "singular_plural.csv").write_text("\n".join(rows))


def _personas(path, n=4):
    letters = "ABCDEFGH"
    rows = [dict(name=f"Person {letters[i]}", country=f"{letters[i]}land", favorite_food=f"{letters[i]}-cake",
                 favorite_drink=f"{letters[i]}-tea", favorite_music_genre=f"{letters[i]}-pop",
                 favorite_sport=f"{letters[i]}-ball", favorite_boardgame=f"{letters[i]}-chess") for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_personaqa_finetune_reader_and_report(tmp_path):
    from metalens.oracle.personaqa import (evaluate_personaqa, fact_sentences, finetune_on_facts, load_personas,
                                           persona_items)

    s = tiny_llama(seed=3)
    written = _personas(tmp_path / "p.jsonl")
    personas = load_personas(tmp_path / "p.jsonl")
    assert personas == written
    # distinct first tokens (the byte tokenizer: first letters), true value first
    items = persona_items(personas, s.tokenizer, n_choices=3)
    assert len(items) == 4 * 6 and all(e.choices[0] == e.answer and len(e.choices) == 3 for _, _, e in items)

    def fact_loss(subject):
        enc = subject.tokenizer(fact_sentences(personas), return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        with torch.no_grad():
            return subject.model(**enc, labels=labels).loss.item()

    tuned = finetune_on_facts(s, personas, tmp_path / "lora", epochs=6, batch_size=8, progress=False)
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    assert fact_loss(tuned) < fact_loss(s) - 0.5  # it learned the facts; the base model is untouched
    o = Oracle(s, add_lora(s.model, 4), SETTINGS)
    ex = [items[0][2]]
    base_read = o.read(ex, [2])[0]
    o.reader = tuned
    tuned_read = o.read(ex, [2])[0]
    o.reader = None
    assert base_read.shape == tuned_read.shape and not torch.allclose(base_read, tuned_read)
    rep = evaluate_personaqa(o, tuned, personas, n_choices=3)
    assert o.reader is None and rep["n"] == 24 and abs(rep["chance"] - 1 / 3) < 1e-3
    for k in ("cloze", "subject", "oracle", "base"):  # accuracies over the 24 questions
        assert rep[k] * rep["n"] == pytest.approx(round(rep[k] * rep["n"]), abs=1e-3)
    # cloze scores: the summed log-probability of each choice's tokens after the prompt, softmaxed
    from metalens.oracle.personaqa import direct_choice_probs

    prompt, choices = "Person A's favorite food is", ["A-cake", "B-cake", "C-cake"]
    got = direct_choice_probs(tuned, [prompt], [choices], chat=False)[0]
    want = []
    for c in choices:
        ids = tuned.tokenizer(f"{prompt} {c}", return_tensors="pt")["input_ids"]
        n = len(tuned.tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            logp = tuned.model(input_ids=ids).logits[0].log_softmax(-1)
        want.append(sum(logp[t - 1, ids[0, t]] for t in range(n, ids.shape[1])))
    assert torch.allclose(got, torch.stack(want).softmax(-1), atol=1e-5)
    assert set(rep["per_attribute"]) == {"country", "favorite_food", "favorite_drink", "favorite_music_genre",
                                         "favorite_sport", "favorite_boardgame"}


def test_personaqa_bad_file_names_the_line(tmp_path):
    from metalens.oracle.personaqa import load_personas

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(dict(name="X", country="Y")) + "\n")
    with pytest.raises(OracleDataError, match=r"p.jsonl:1: missing"):
        load_personas(f)


DDP_SCRIPT = """
import sys
from metalens.oracle.train import RECIPES, OracleConfig, train
from metalens.testing import tiny_llama
data, out, ga = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = OracleConfig.from_json({**RECIPES["tiny"].__dict__, "data_dir": data, "max_steps": 3, "grad_accum": ga,
                              "threads": 1})
train(cfg, out, subject=tiny_llama(seed=1), progress=False)
"""


def test_torchrun_two_processes_equal_one_with_grad_accum(tmp_path):
    """2 processes (gloo on CPU) x grad_accum 1 make the same updates as 1 process x grad_accum 2."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    data = tmp_path / "ao"
    _tiny_data(data)
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "one"), "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    (tmp_path / "two").mkdir()
    shutil.copytree(tmp_path / "one" / "data", tmp_path / "two" / "data")  # the same examples, in the same order
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(data),
                          str(tmp_path / "two"), "1"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(tmp_path / "one" / "ckpt" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "ckpt" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    sa = torch.load(tmp_path / "one" / "ckpt" / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "two" / "ckpt" / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 3 and sa["cursor"] == sb["cursor"]
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 3  # one writer: rank 0
