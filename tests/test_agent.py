"""The agent: each tool equals the direct library call; the loop survives bad calls and its budget;
a killed run resumes at the next step; the transcript reproduces the tool results."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

from metalens import Feature, capture, subject_from
from metalens.agent import AgentConfig, Toolbox, parse_target, run_agent
from metalens.agent.loop import EndpointChat, LocalChat, Reply, as_text_messages, call_message, parse_text_calls
from metalens.agent.targets import direction_target, neuron_direction, rule_target
from metalens.agent.tools import SCHEMAS
from metalens.agent.transcript import Transcript, html_page, markdown
from metalens.autointerp.explainer import TrainedExplainer, simulation_r
from metalens.autointerp.rules import make_rules
from metalens.autointerp.simulator import TrainedSimulator
from metalens.errors import DataError
from metalens.intervene import edit
from metalens.models import logit_lens
from metalens.results import ResultsDB

TEXTS = [f"Text {i}: the {w} sat on a mat in May, then {i * 7} birds flew over Paris." for i, w in
         enumerate("cat dog cow fox owl bee ant elk pig hen yak emu".split())]
SPEC = "neurons.1:5"


@pytest.fixture(scope="module")
def box(tiny):
    target = parse_target(SPEC, tiny)
    sim = TrainedSimulator(tiny.model, tiny.tokenizer, name="tiny-random")
    return Toolbox(tiny, target, TEXTS, sim, explainer=TrainedExplainer(tiny.model, tiny.tokenizer),
                   summarise=lambda text: f"summary of {text.count(chr(10)) + 1} exemplars")


def values_of(tiny, text):
    acts = capture(tiny, [text], ["neurons.1"])
    return acts.token_ids.tolist(), acts["neurons.1"][:, 5].numpy()


def test_activations_equal_capture(tiny, box):
    text = "A fox in May."
    _, vals = values_of(tiny, text)
    got = box.call("activations", {"text": text})
    nums = [float(x) for x in re.findall(r"'=(-?[0-9.]+)", got)]
    assert np.allclose(nums, vals, atol=0.006)
    assert got.startswith(f"max {vals.max():.2f}")


def test_top_examples_are_the_strongest_explore_windows(tiny, box):
    explore = [i for i in range(len(TEXTS)) if i % 4 in (0, 1)]
    best = max(values_of(tiny, TEXTS[i])[1][:32].max() for i in explore)  # windows of 32 tokens: the first
    out = box.call("top_examples", {"n": 2})
    assert f"[max {best:.2f}]" in out.split("\n")[1]
    assert box.call("top_examples", {"which": "nope"}).startswith("error: which='nope'")


def test_edit_compares_both_texts(tiny, box):
    out = box.call("edit", {"text": "the cat sat", "old": "cat", "new": "dog"})
    _, a = values_of(tiny, "the cat sat")
    _, b = values_of(tiny, "the dog sat")
    assert out.split("\n")[0].startswith(f"original max {a.max():.2f}")
    assert out.split("\n")[1].startswith(f"edited   max {b.max():.2f}")
    assert box.call("edit", {"text": "the cat sat", "old": "cow", "new": "dog"}).startswith("error: old='cow'")


def test_steer_equals_a_direct_clamp(tiny, box):
    def fn(a):
        a = a.clone()
        a[:, 5] = 3.0
        return a

    with edit(tiny, "neurons.1", fn):
        direct = tiny.generate("hi", max_new_tokens=24)
    out = box.call("steer", {"prompt": "hi", "value": 3.0})
    assert f"steered: {direct!r}" in out
    assert f"plain:   {tiny.generate('hi', max_new_tokens=24)!r}" in out
    assert box.call("steer", {"prompt": "hi", "value": "big"}) == 'error: steer: value must be a number, got "big"'


def test_logit_lens_of_the_neuron_write_direction(tiny, box):
    w = tiny.model.model.layers[1].mlp.down_proj.weight[:, 5]
    assert torch.equal(neuron_direction(tiny, 1, 5), w.float())
    lens = logit_lens(tiny, w, 4)
    out = box.call("logit_lens", {"n": 4})
    assert out.split("\n")[0] == "promotes: " + ", ".join(repr(t) for t, _ in lens.promoted)


def test_score_hypothesis_equals_simulation_r(box):
    r = simulation_r(box.simulator, "animals", box.scoring_windows("check"))
    out = box.call("score_hypothesis", {"explanation": "animals"})
    assert out.startswith(f"simulation r on held-out check windows: {r:.3f}")
    assert box.ledger.entries["animals"]["score"] == pytest.approx(r)


def test_explain_and_summarise(tiny, box):
    wins = [(w.tokens, w.values) for w in box.exemplars(8) + box.exemplars(2, "zero")]
    direct = box.explainer.explain(wins, k=2, seed=0)
    out = box.call("explain", {"n": 2})
    assert out == ("candidates: " + "; ".join(repr(c) for c in direct) if direct else "the explainer gave nothing usable")
    assert box.call("summarise", {}) == f"summary of {len(box.exemplars(6))} exemplars"  # it sees the exemplars only


def test_oracle_tool_equals_oracle_ask(tiny):
    from metalens.adapters import add_lora
    from metalens.oracle import Oracle

    sub = subject_from(copy.deepcopy(tiny.model), tiny.tokenizer, "oracle-copy")
    oracle = Oracle(sub, add_lora(sub.model, rank=2), {"layers": [1], "inject_layer": 1, "inject": "add", "scale": 1.0})
    target = parse_target(SPEC, sub)
    box = Toolbox(sub, target, TEXTS, TrainedSimulator(tiny.model, tiny.tokenizer), oracle=oracle)
    ctx = box.firing_contexts(1)[0]
    direct = oracle.ask(ctx, "What is here?", read=(-1, None), max_new_tokens=24).text
    assert box.call("ask_oracle", {"question": "What is here?", "n": 1}) == f"- at {ctx[-40:]!r}: {direct}"


def test_oracle_reads_an_injected_direction_like_read_activations(tiny):
    """ask_direction injects one vector where ask injects read activations: given the vector ask would read, the
    answers are the same."""
    from metalens.adapters import add_lora
    from metalens.agent.baselines import ask_direction
    from metalens.oracle import Example, Oracle

    sub = subject_from(copy.deepcopy(tiny.model), tiny.tokenizer, "oracle-copy")
    oracle = Oracle(sub, add_lora(sub.model, rank=2), {"layers": [1], "inject_layer": 1, "inject": "add", "scale": 1.0})
    text = "the cat sat on the mat"
    (vec,) = oracle.read([Example(text, "q", read="last")], [1])  # [1, d]
    direct = oracle.ask(text, "What is here?", read="last", max_new_tokens=12).text
    assert ask_direction(oracle, vec[0], "What is here?", max_new_tokens=12) == direct


def test_sae_and_direction_and_rule_targets(tiny, tmp_path):
    from metalens.sae.io import save_sae
    from metalens.sae.model import Sae, SaeConfig

    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=tiny.d_model, width=32, k=4, site="resid.2"))
    save_sae(sae, tmp_path / "sae")
    t = parse_target(f"sae:{tmp_path / 'sae'}:7", tiny)
    acts = capture(tiny, ["the cat sat"], ["resid.2"])["resid.2"]
    want = sae.encode(acts.float())[:, 7].detach().numpy()
    assert np.allclose(t.read(["the cat sat"])[0][1], want, atol=1e-5)
    with pytest.raises(DataError, match="out of range"):
        parse_target(f"sae:{tmp_path / 'sae'}:99", tiny)
    with pytest.raises(DataError, match="SITE:INDEX"):
        parse_target("neurons.one", tiny)
    with pytest.raises(DataError, match="out of range"):
        parse_target("neurons.1:100000", tiny)
    with pytest.raises(DataError, match="probe"):
        parse_target(f"probe:{tmp_path}/none", tiny)
    from metalens.probes import Probe, save_probe

    w = torch.randn(tiny.d_model)
    save_probe(Probe("resid.2", w, 0.5, "diffmean", "mean", name="p"), tmp_path / "probe")
    pt = parse_target(f"probe:{tmp_path / 'probe'}", tiny)
    assert np.allclose(pt.read(["the cat sat"])[0][1], (acts @ w + 0.5).numpy(), atol=1e-4)
    v = torch.randn(tiny.d_model)
    d = direction_target(tiny, Feature.from_direction("resid.2", v, "v"))
    assert np.allclose(d.read(["the cat sat"])[0][1], (acts @ v).numpy(), atol=1e-4)
    with d.set_value(2.5):  # clamping sets the projection itself
        assert np.allclose(d.read(["the cat sat"])[0][1], 2.5, atol=1e-3)
    rule = next(r for r in make_rules() if r.name == "months")
    rt = rule_target(rule, tiny.tokenizer)
    toks, vals = rt.read(["in May"])[0]
    assert "".join(toks) == "in May" and vals.tolist() == rule.values(toks).tolist() and vals.max() == 1


def test_call_errors_are_messages(box):
    assert box.call("nope", {}).startswith("error: unknown tool 'nope'")
    assert box.call("activations", {}).startswith("error: activations needs ['text'], missing ['text']")
    lens = box.call("logit_lens", {"x": 1})  # an unknown argument is ignored, and said so
    assert lens.startswith("(ignored unknown argument(s) ['x']") and lens.endswith(box.call("logit_lens", {}))
    assert box.call("activations", "text").startswith("error: arguments of activations must be a JSON object")
    assert box.call("activations", {"text": 3}).startswith("error:")


# ---- the loop, driven by a scripted stand-in for the external LLM ------------------------------------
class Scripted:
    """Returns canned replies in order (text parsed like a local model's), recording what it was sent."""

    name = "scripted"

    def __init__(self, replies, crash_at: int | None = None):
        self.replies, self.crash_at, self.seen = list(replies), crash_at, []

    def chat(self, messages, tools, max_tokens, temperature, seed):
        if self.crash_at is not None and seed >= self.crash_at:
            raise KeyboardInterrupt("killed")
        self.seen.append([dict(m) for m in messages])
        text = self.replies[seed] if seed < len(self.replies) else "I give up."
        calls = parse_text_calls(text, seed * 10) if tools else []
        return Reply(call_message(calls, text), calls, 100, 10)


REPLIES = [
    'Let me look. {"tool": "top_examples", "args": {"n": 2}}',
    '{"tool": "top_examples", "args": {"n": 2',                        # malformed JSON
    '{"tool": "read_minds", "args": {}}',                              # unknown tool
    'I think it is about animals.',                                    # no call at all
    '{"tool": "activations", "args": {"txt": "a cat"}}',              # missing argument
    '{"tool": "note", "args": {"hypothesis": "animals", "evidence": "cat, dog", "supports": true}}',
    '{"tool": "score_hypothesis", "args": {"explanation": "animals"}}',
    '{"tool": "activations", "args": {"text": "a cat"}}',
]


def test_loop_survives_bad_calls_and_ends_on_budget(box, tmp_path):
    box.ledger.entries.clear()
    llm = Scripted(REPLIES)
    db = ResultsDB(tmp_path / "r.sqlite")
    res = run_agent(llm, box, tmp_path / "run", AgentConfig(max_calls=8), db=db, run_id=None)
    steps = Transcript(tmp_path / "run").steps()
    assert len(steps) == 8
    results = [c["result"] for s in steps for c in s["calls"]]
    assert results[1].startswith("(could not parse a JSON object")  # never closed: run by name, no arguments
    assert results[1].endswith(box.call("top_examples", {}))
    assert results[2].startswith("error: unknown tool 'read_minds'")
    assert results[3].startswith("error: no tool call found")
    assert results[4].startswith("error: activations needs ['text']")
    # every error went back to the model as a message it reads next
    assert "unknown tool 'read_minds'" in json.dumps(llm.seen[3])
    assert res.source == "ledger" and res.explanation == "animals"  # no final_answer: the ledger's best
    assert res.score == pytest.approx(simulation_r(box.simulator, "animals", box.scoring_windows("test")))
    assert res.final["tool_calls"] == 8 and res.final["valid_calls"] == 5
    assert res.final["tool_counts"]["(unparsed)"] == 1
    assert [r["step"] for r in db.agent_steps()] == list(range(8))
    assert db.explanations(box.target.id)[-1]["text"] == "animals"


def test_final_answer_ends_the_run_and_token_budget(box, tmp_path):
    llm = Scripted(['{"tool": "final_answer", "args": {"explanation": "birds", "evidence": "e"}}'])
    res = run_agent(llm, box, tmp_path / "a", AgentConfig(max_calls=10))
    assert (res.source, res.explanation, res.final["steps"]) == ("final_answer", "birds", 1)
    llm = Scripted(REPLIES)
    res = run_agent(llm, box, tmp_path / "b", AgentConfig(max_calls=100, max_tokens=250))
    assert res.final["steps"] == 3  # 110 tokens per step: stops once 250 is reached


def test_killed_run_resumes_at_next_step(box, tmp_path):
    box.ledger.entries.clear()
    whole = run_agent(Scripted(REPLIES), box, tmp_path / "whole", AgentConfig(max_calls=8))
    box.ledger.entries.clear()
    with pytest.raises(KeyboardInterrupt):
        run_agent(Scripted(REPLIES, crash_at=6), box, tmp_path / "cut", AgentConfig(max_calls=8))
    assert len(Transcript(tmp_path / "cut").steps()) == 6
    box.ledger.entries.clear()  # a new process: the ledger comes back from the transcript
    again = Scripted(REPLIES)
    res = run_agent(again, box, tmp_path / "cut", AgentConfig(max_calls=8))
    assert len(again.seen) == 2  # only steps 6 and 7 asked the LLM
    ref = Scripted(REPLIES)
    box.ledger.entries.clear()
    run_agent(ref, box, tmp_path / "ref", AgentConfig(max_calls=8))
    assert again.seen[0] == ref.seen[6]  # the replayed history is the history it would have had
    a, b = Transcript(tmp_path / "whole").steps(), Transcript(tmp_path / "cut").steps()
    assert [s["step"] for s in b] == list(range(8))
    assert [c["result"] for s in a for c in s["calls"]] == [c["result"] for s in b for c in s["calls"]]
    assert (res.explanation, res.score) == (whole.explanation, whole.score)
    with pytest.raises(DataError, match="another run"):
        run_agent(Scripted(REPLIES), box, tmp_path / "cut", AgentConfig(max_calls=9))


def test_transcript_reproduces_tool_results(box, tmp_path):
    run_agent(Scripted(REPLIES), box, tmp_path / "t", AgentConfig(max_calls=8))
    t = Transcript(tmp_path / "t")
    h, steps, final = t.header(), t.steps(), t.final()
    md = (tmp_path / "t" / "transcript.md").read_text()
    for s in steps:
        for c in s["calls"]:
            assert c["result"] in md
            if c["ok"] and c["name"] in ("activations", "top_examples", "score_hypothesis"):
                assert c["result"].endswith(box.call(c["name"], c["args"]))  # rerunning it gives the same text
    page = html_page(h | {"feature": "<script>x</script>"}, steps, final)
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert markdown(h, steps, final).count("## Step") == 8


def test_parse_text_calls():
    c = parse_text_calls('ok {"tool": "note", "args": {"hypothesis": "a", "evidence": "b"}} and {"name": "x"}')
    assert [(x.name, x.args, x.error) for x in c] == [("note", {"hypothesis": "a", "evidence": "b"}, None),
                                                    ("x", {}, None)]
    assert parse_text_calls('{"tool": "note", "args": "{bad"}')[0].error.startswith("arguments are not valid JSON")
    assert parse_text_calls('{"tool": 3}')[0].error.startswith("'tool' must be")
    assert parse_text_calls("no json here") == []
    assert parse_text_calls('{"tool": "top_examples", "args": {"n": 2')[0][1:3] == ("top_examples", {})
    assert parse_text_calls('{"args": {"n": 2')[0].error.startswith("could not parse")
    assert parse_text_calls('{"tool": "note", "args": {"hypothesis": "a\nb", "evidence": "c"}}')[0].args["hypothesis"] == "a\nb"


def test_local_chat_renders_tools_and_parses(tiny):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            call_message(parse_text_calls('{"tool": "logit_lens", "args": {}}'), None),
            {"role": "tool", "tool_call_id": "call_0", "name": "logit_lens", "content": "promotes: x"}]
    text = as_text_messages(msgs, list(SCHEMAS.values()), keep=8)
    assert "- score_hypothesis(explanation)" in text[0]["content"]
    assert text[2]["content"] == '{"tool": "logit_lens", "args": {}}'
    assert text[3] == {"role": "user", "content": "Result of logit_lens:\npromotes: x"}
    r = LocalChat(tiny).chat(msgs, list(SCHEMAS.values()), max_tokens=4)
    assert r.tokens_out <= 4 and r.tokens_in > 100 and r.message["role"] == "assistant"


def test_endpoint_chat_reads_native_tool_calls():
    import httpx

    from metalens.autointerp.llm import EndpointConfig, EndpointLLM

    sent = []

    def handler(request):
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "note", "arguments": '{"hypothesis": "h", "evidence": "e"}'}},
            {"id": "c2", "type": "function", "function": {"name": "activations", "arguments": "{oops"}}]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 7}})

    ep = EndpointLLM(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0))
    ep.client = httpx.Client(base_url="http://127.0.0.1:9/v1", transport=httpx.MockTransport(handler))
    r = EndpointChat(ep).chat([{"role": "user", "content": "hi"}], list(SCHEMAS.values()), 32, 0.0, 0)
    assert sent[0]["tools"][0]["function"]["name"] == "top_examples" and sent[0]["tool_choice"] == "auto"
    assert r.calls[0] == ("c1", "note", {"hypothesis": "h", "evidence": "e"}, None, None)
    assert r.calls[1].error.startswith("arguments are not valid JSON")
    assert (r.tokens_in, r.tokens_out) == (50, 7)


def test_cli_agent_on_a_store_resumes_and_fails_cleanly(tiny, tmp_path):
    from typer.testing import CliRunner

    from metalens import capture_to_store
    from metalens.cli import app

    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    capture_to_store(tiny, TEXTS, ["neurons.1"], tmp_path / "acts", progress=False)
    args = ["agent", "--feature", SPEC, "--store", str(tmp_path / "acts"), "--budget", "2", "--oracle", "none",
            "--simulator", "prompt", "--explainer", "prompt", "--model", str(tmp_path / "model"), "--device", "cpu",
            "--out", str(tmp_path / "run"), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["feature"] == SPEC and out["tool_calls"] == 2 and out["steps"] == len(Transcript(tmp_path / "run").steps())
    assert (tmp_path / "run" / "transcript.md").exists() and (tmp_path / "run" / "transcript.html").exists()
    r2 = CliRunner().invoke(app, args)  # finished: the same answer, no new step
    assert r2.exit_code == 0 and json.loads(r2.stdout[r2.stdout.index("{"):]) == out
    bad = CliRunner().invoke(app, args[:2] + ["probe:nowhere"] + args[3:])
    assert bad.exit_code == 2 and "probe" in bad.output and "Traceback" not in bad.output


@pytest.mark.integration
def test_local_model_writes_a_tool_call_it_can_run(real):
    from metalens.agent.loop import opening

    r = LocalChat(real).chat(opening(SPEC, AgentConfig()), list(SCHEMAS.values()), 80)
    assert r.calls and r.calls[0].name in SCHEMAS and r.calls[0].error is None
