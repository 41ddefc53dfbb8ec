"""The agent loop: an LLM calls tools (OpenAI tool-calling messages) until it answers or its budget ends.

    llm = EndpointChat(EndpointConfig(base_url=URL, model=NAME))    # native tool calls
    llm = LocalChat(subject)                                       # JSON tool calls parsed from its text
    result = run_agent(llm, box, "runs/agent-n5-17", AgentConfig(max_calls=30))

Every reply is one step: its tool calls run (a malformed or unknown call gets an error message the
model can read, never an exception), the step is appended to the run's transcript, and the loop goes
on until `final_answer`, the tool-call budget or the token budget. Without a final answer the
explanation falls back to the ledger's best-scored hypothesis, then the trained explainer. The answer
is scored by the simulator on held-out "test" windows that no tool ever shows.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ..autointerp.explainer import simulation_r
from .tools import SCHEMAS, Toolbox, load_json_args
from .transcript import Transcript, replay, write_views


@dataclass(frozen=True)
class AgentConfig:
    """Budget and sampling of one agent run."""

    max_calls: int = 30
    """tool calls (a reply without a usable call counts as one)"""
    max_tokens: int = 200_000
    """prompt + completion tokens over all LLM calls"""
    max_new_tokens: int = 160
    """tokens per reply"""
    temperature: float = 0.0
    """sampling temperature of the driving LLM"""
    seed: int = 0
    """sampling seed"""
    calls_per_step: int = 4
    """tool calls run from one reply (the rest get an error)"""


class Call(NamedTuple):
    """One tool call as the LLM wrote it."""

    id: str
    """the call id the tool result answers"""
    name: str | None
    """the tool's name (None when it could not be read)"""
    args: dict | None
    """its arguments (None when they could not be parsed)"""
    error: str | None
    """why the call cannot run as written"""
    note: str | None = None
    """what was repaired to run it (shown to the model with the result)"""


class Reply(NamedTuple):
    """One LLM response."""

    message: dict
    """the assistant message to append to the history (OpenAI format)"""
    calls: list[Call]
    """the tool calls in it"""
    tokens_in: int
    """prompt tokens"""
    tokens_out: int
    """completion tokens"""


class ChatLLM(Protocol):
    name: str

    def chat(self, messages: list[dict], tools: list[dict], max_tokens: int, temperature: float, seed: int) -> Reply: ...


# ---- tool calls written as text ------------------------------------------------------------------
def parse_text_calls(text: str, start: int = 0) -> list[Call]:
    """The JSON tool calls in free text: {"tool": NAME, "args": {...}} (or {"name", "arguments"})."""
    dec, calls, i = json.JSONDecoder(strict=False), [], text.find("{")  # strict=False: raw newlines in strings
    bad = None
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            bad = bad or f"could not parse a JSON object at {text[i:i + 60]!r} ({e.msg})"
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict) and ("tool" in obj or "name" in obj):
            name = obj.get("tool", obj.get("name"))
            args, why = load_json_args(obj.get("args", obj.get("arguments", {})))
            cid = f"call_{start + len(calls)}"
            if not isinstance(name, str):
                calls.append(Call(cid, None, None, f"'tool' must be a tool name string, got {name!r}"))
            else:
                calls.append(Call(cid, name, args, why))
        i = text.find("{", end)
    if not calls and bad:
        named = re.search(r'\{\s*"(?:tool|name)"\s*:\s*"([A-Za-z_]+)"', text)
        if named:  # the object never closed: run the named tool without arguments rather than nothing
            return [Call(f"call_{start}", named.group(1), {}, None, f"({bad}; ran {named.group(1)} without arguments)")]
        return [Call(f"call_{start}", None, None, bad)]
    return calls


def tools_prompt(tools: list[dict]) -> str:
    """The tool list and the JSON format, for a model without native tool calls."""
    lines = ["You can call these tools:"]
    for t in tools:
        f = t["function"]
        params = ", ".join(f["parameters"]["properties"])
        lines.append(f"- {f['name']}({params}): {f['description']}")
    lines.append('Reply with exactly one tool call as JSON on one line, e.g. {"tool": "top_examples", "args": {"n": 4}}')
    lines.append('A good run: {"tool": "top_examples", "args": {"n": 4}}, then {"tool": "score_hypothesis", "args": '
                 '{"explanation": "names of months"}}, then {"tool": "activations", "args": {"text": "We met in May."}}, '
                 'then {"tool": "final_answer", "args": {"explanation": "names of months", "evidence": "..."}}')
    return "\n".join(lines)


def as_text_messages(messages: list[dict], tools: list[dict], keep: int) -> list[dict]:
    """OpenAI messages -> plain chat messages: tool calls as their JSON, tool results as user turns;
    the opening messages and the last `keep` others are kept."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"Result of {m.get('name', 'tool')}:\n{m['content']}"})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"tool": c["function"]["name"], "args": load_json_args(c["function"]["arguments"])[0]}
                     for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": (m.get("content") or "") + "\n".join(json.dumps(c) for c in calls)})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    head = [dict(out[0], content=out[0]["content"] + "\n\n" + tools_prompt(tools))] if out else []
    rest = out[1:]
    keep_from = max(1, len(rest) - keep)
    return head + rest[:1] + rest[keep_from:] if len(rest) > keep else head + rest


def call_message(calls: list[Call], content: str | None) -> dict:
    """The assistant message carrying calls in OpenAI form (unparseable ones keep their text in content)."""
    msg: dict = {"role": "assistant", "content": content}
    ok = [c for c in calls if c.name is not None]
    if ok:
        msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.name, "arguments": json.dumps(c.args if c.args is not None else {})}} for c in ok]
    return msg


PREFIX = '{"tool": "'


def json_closed(text: str) -> bool:
    """Whether text holds a complete top-level JSON object (braces balance outside strings)."""
    depth, in_str, esc, seen = 0, False, False, False
    for ch in text:
        if in_str:
            esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth, seen = depth + 1, True
        elif ch == "}":
            depth -= 1
            if seen and depth == 0:
                return True
    return False


class LocalChat:
    """A local Subject as the driving LLM. It has no native tool calls: its reply is constrained to start
    with '{"tool": "' (so it must name a tool), generation stops when the JSON object closes, and the
    call is parsed from the text; anything unparseable goes back to it as an error message."""

    def __init__(self, subject, keep: int = 8, constrained: bool = True):
        self.subject, self.keep, self.constrained = subject, keep, constrained
        self.name = f"local:{subject.name}" + ("" if constrained else ":free")

    def chat(self, messages: list[dict], tools: list[dict], max_tokens: int = 160, temperature: float = 0.0,
             seed: int = 0) -> Reply:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        s, tok = self.subject, self.subject.tokenizer
        prefix = PREFIX if tools and self.constrained else ""
        text = s.chat(as_text_messages(messages, tools, self.keep) if tools else messages) + prefix
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(s.device)
        n = enc["input_ids"].shape[1]

        class Closed(StoppingCriteria):
            def __call__(self, ids, scores, **kw):
                return bool(prefix) and json_closed(prefix + tok.decode(ids[0, n:], skip_special_tokens=True))

        kw = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = s.model.generate(**enc, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                                   stopping_criteria=StoppingCriteriaList([Closed()]), **kw)
        new = out[0, n:]
        reply = prefix + tok.decode(new, skip_special_tokens=True).strip()
        calls = parse_text_calls(reply, seed * 1000) if tools else []
        return Reply(call_message(calls, reply), calls, int(n), int(new.shape[0]))


class EndpointChat:
    """An OpenAI-compatible endpoint with native tool calls (HTTP, retries, cache: autointerp.llm.EndpointLLM);
    a reply that writes its call as text instead is parsed like LocalChat's."""

    def __init__(self, endpoint):
        self.endpoint, self.name = endpoint, f"endpoint:{endpoint.name}"

    def chat(self, messages: list[dict], tools: list[dict], max_tokens: int = 160, temperature: float = 0.0,
             seed: int = 0) -> Reply:
        body = dict(messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        if tools:
            body |= dict(tools=tools, tool_choice="auto")
        data = self.endpoint.post("/chat/completions", body)
        msg = data["choices"][0].get("message") or {}
        content = msg.get("content")
        calls = []
        for j, c in enumerate(msg.get("tool_calls") or []):
            f = c.get("function") or {} if isinstance(c, dict) else {}
            args, why = load_json_args(f.get("arguments"))
            cid = c.get("id") or f"call_{seed}_{j}" if isinstance(c, dict) else f"call_{seed}_{j}"
            calls.append(Call(cid, f.get("name") if isinstance(f.get("name"), str) else None, args,
                              why if isinstance(f.get("name"), str) else f"tool call without a function name: {str(c)[:80]}"))
        if not calls and tools and content:
            calls = parse_text_calls(content, seed * 1000)
        usage = data.get("usage") or {}
        n_in = usage.get("prompt_tokens") or sum(len(str(m.get("content") or "")) for m in messages) // 4
        n_out = usage.get("completion_tokens") or len(str(content or "")) // 4
        return Reply(call_message(calls, content), calls, int(n_in), int(n_out))


def summariser(llm: ChatLLM, max_tokens: int = 60):
    """exemplar text -> a short description, from a fresh conversation (it never sees the agent's hypotheses)."""

    def fn(exemplars: str) -> str:
        msgs = [{"role": "user", "content": "These texts show where a feature of a language model fires (marked "
                 f"<<like this>>):\n{exemplars}\nIn one short phrase, what do the marked tokens have in common?"}]
        return (llm.chat(msgs, [], max_tokens, 0.0, 0).message.get("content") or "").strip() or "(no summary)"

    return fn


# ---- the loop -----------------------------------------------------------------------------------
SYSTEM = ("You are an interpretability researcher studying one feature of a language model: a number computed at "
          "every token. Find out what makes it fire. Look at exemplars, write test texts, edit them, steer, and "
          "test hypotheses with score_hypothesis (simulation r on held-out text). Keep a ledger with note. Finish "
          "with final_answer: a short explanation (a phrase like 'names of months') and its evidence.")


def opening(feature: str, cfg: AgentConfig) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Study feature {feature}. You have {cfg.max_calls} tool calls. Start by "
             "looking at its top examples."}]


class AgentResult(NamedTuple):
    """What one run found."""

    explanation: str | None
    """the final explanation (None when nothing usable came out)"""
    source: str
    """final_answer | ledger | explainer | none: where the explanation came from"""
    score: float | None
    """simulation r on the held-out test windows"""
    final: dict
    """everything in final.json (evidence, budget spent, tool counts, ledger)"""


def replay_ledger(box: Toolbox, steps: list[dict]) -> None:
    """Rebuild the ledger from the recorded calls (no tool runs again)."""
    for s in steps:
        for c in s["calls"]:
            if not c["ok"]:
                continue
            if c["name"] == "note":
                box.ledger.note(c["args"]["hypothesis"].strip(), c["args"]["evidence"], bool(c["args"].get("supports", True)))
            elif c["name"] == "score_hypothesis":
                box.ledger.scored(c["args"]["explanation"], c.get("r"))


def run_agent(llm: ChatLLM, box: Toolbox, run_dir: str | Path, cfg: AgentConfig = AgentConfig(), db=None,
              run_id: int | None = None) -> AgentResult:
    """Run (or resume) the agent on box's feature; see the module doc."""
    t = Transcript(run_dir)
    t.dir.mkdir(parents=True, exist_ok=True)
    header = {"feature": box.target.id, "config": asdict(cfg), "llm": llm.name, "messages": opening(box.target.id, cfg),
              "tools": list(SCHEMAS)}
    steps = t.start(header)
    if (done := t.final()) is not None:
        return AgentResult(done["explanation"], done["source"], done["score"], done)
    messages = replay(t.header(), steps)
    replay_ledger(box, steps)
    calls_used = sum(max(1, len(s["calls"])) for s in steps)
    tokens = sum(s["tokens_in"] + s["tokens_out"] for s in steps)
    final = next(({"explanation": c["args"]["explanation"], "evidence": c["args"].get("evidence", "")}
                  for s in steps for c in s["calls"] if c["name"] == "final_answer" and c["ok"]), None)
    tools = list(SCHEMAS.values())
    seen = {json.dumps([c["name"], c["args"]], sort_keys=True): s["step"] for s in steps for c in s["calls"] if c["ok"]}
    while final is None and calls_used < cfg.max_calls and tokens < cfg.max_tokens:
        i, t0 = len(steps), time.time()
        reply = llm.chat(messages, tools, cfg.max_new_tokens, cfg.temperature, cfg.seed + i)
        results, calls = [], []
        todo = reply.calls[: max(1, min(cfg.calls_per_step, cfg.max_calls - calls_used))]
        if not reply.calls:
            why = ("error: no tool call found in your reply. Reply with one tool call as JSON, e.g. "
                   '{"tool": "top_examples", "args": {"n": 4}}, or call final_answer.')
            results.append({"role": "user", "content": why})
            calls.append({"name": None, "args": None, "result": why, "ok": False})
        for c in reply.calls:
            rec = {"name": c.name, "args": c.args}
            if c not in todo:
                result = "error: not run: too many tool calls in one reply (or the budget is spent)"
            elif c.error or c.name is None:
                result = f"error: {c.error}"
            else:
                box.last_r = None
                result = box.call(c.name, c.args)
                if c.note:
                    result = f"error: {c.note} {result[7:]}" if result.startswith("error: ") else f"{c.note}\n{result}"
                if c.name == "score_hypothesis" and not result.startswith("error"):
                    rec["r"] = box.last_r
            ok = not result.startswith("error")
            key = json.dumps([c.name, c.args], sort_keys=True)
            if ok and key in seen and c.name != "final_answer":
                result = f"(the same call as step {seen[key]}: nothing new; try another tool or other arguments)\n" + result
            elif ok:
                seen[key] = i
            left = cfg.max_calls - calls_used - len(calls) - 1
            result_msg = result + f"\n[{left} tool calls left{'; call final_answer now' if left <= 2 else ''}]"
            if c.name is not None:
                results.append({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": result_msg})
            else:
                results.append({"role": "user", "content": result_msg})
            calls.append(rec | {"result": result, "ok": ok})
            if ok and c.name == "final_answer" and final is None:
                final = {"explanation": c.args["explanation"], "evidence": c.args.get("evidence", "")}
        step = {"step": i, "assistant": reply.message, "results": results, "calls": calls,
                "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "seconds": time.time() - t0,
                "time": time.time()}
        t.append(step)
        if db is not None:
            db.add_agent_step(run_id, box.target.id, i, step)
        steps.append(step)
        messages += [reply.message, *results]
        calls_used += max(1, len(calls))
        tokens += reply.tokens_in + reply.tokens_out
    return finish(box, t, steps, final, db, run_id, llm.name)


def finish(box: Toolbox, t: Transcript, steps: list[dict], final: dict | None, db, run_id, llm_name: str) -> AgentResult:
    """Pick the answer (final_answer, else the ledger's best, else the explainer), score it on test, save."""
    source = "final_answer"
    if final is None and (best := box.ledger.best()) is not None:
        final, source = {"explanation": best, "evidence": "ledger: " + box.ledger.render()}, "ledger"
    if final is None and box.explainer is not None:
        cands = box.explainer.explain([(w.tokens, w.values) for w in box.exemplars(8)], k=1, seed=0)
        if cands:
            final, source = {"explanation": cands[0], "evidence": "no answer within budget; trained explainer"}, "explainer"
    if final is None:
        final, source = {"explanation": None, "evidence": "no answer within budget"}, "none"
    expl = final["explanation"]
    score = simulation_r(box.simulator, expl, box.scoring_windows("test")) if expl else None
    counts = Counter(c["name"] or "(unparsed)" for s in steps for c in s["calls"])
    out = final | {
        "feature": box.target.id, "source": source, "score": score, "llm": llm_name,
        "score_reason": None if score is not None else ("no explanation" if not expl else "r undefined on test windows"),
        "steps": len(steps), "llm_calls": len(steps) + counts.get("summarise", 0),
        "tool_calls": sum(len(s["calls"]) for s in steps), "valid_calls": sum(c["ok"] for s in steps for c in s["calls"]),
        "tokens": sum(s["tokens_in"] + s["tokens_out"] for s in steps), "tool_counts": dict(counts),
        "seconds": sum(s["seconds"] for s in steps), "ledger": box.ledger.entries,
    }
    t.finish(out)
    write_views(t.dir)
    if db is not None and expl:
        db.add_explanation(run_id, box.target.id, expl, explainer=f"agent:{llm_name}", prompt_version="agent-v1",
                           scores=[("simulation", "test", score, {"source": source, "simulator": box.simulator.name})])
    return AgentResult(expl, source, score, out)
