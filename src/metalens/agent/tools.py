"""The agent's tools: plain functions over metalens's methods, each with an OpenAI tool schema,
each returning compact text an LLM can read.

    target = parse_target("neurons.5:17", subject)          # targets.py: sae:DIR:123, probe:DIR, rule_target(rule)
    box = Toolbox(subject, target, corpus_texts, simulator)   # windows split explore / check / test
    box.call("top_examples", {"n": 3})                       # -> str (an error is a string too, never a raise)

The feature's windows come from a corpus, split by text: "explore" (what top_examples shows),
"check" (what score_hypothesis scores a hypothesis on, so the agent can test before committing)
and "test" (never shown; the final answer is scored there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..autointerp.examples import Sequences, Window, make_windows, show_token
from ..autointerp.explainer import simulation_r
from ..errors import DataError
from ..models import Subject, logit_lens
from .targets import Target

SPLITS = ("explore", "explore", "check", "test")  # text i goes to SPLITS[i % 4]


class ToolError(DataError):
    """A tool call the tools cannot serve (bad argument, missing capability); its message goes back to the LLM."""


# ---- rendering ------------------------------------------------------------------------------------
def marked(w: Window, top: float, mark: float = 0.3) -> str:
    """Window text with the tokens above mark x top shown <<like this>> (value after it)."""
    out = []
    for t, v in zip(w.tokens, w.values):
        out.append(f"<<{show_token(t)}>>({v:.1f})" if top > 0 and v > mark * top else show_token(t))
    return "".join(out).strip()


def per_token(tokens: Sequence[str], values: Sequence[float]) -> str:
    return " ".join(f"{show_token(t)!r}={v:.2f}" for t, v in zip(tokens, values))


# ---- the toolbox ----------------------------------------------------------------------------------
@dataclass
class Ledger:
    """Hypotheses the agent keeps, with the evidence for and against each and its best check score."""

    entries: dict[str, dict] = field(default_factory=dict)

    def note(self, hypothesis: str, evidence: str, supports: bool) -> None:
        e = self.entries.setdefault(hypothesis, {"for": [], "against": [], "score": None})
        e["for" if supports else "against"].append(evidence)

    def scored(self, hypothesis: str, r: float | None) -> None:
        e = self.entries.setdefault(hypothesis, {"for": [], "against": [], "score": None})
        if r is not None and (e["score"] is None or r > e["score"]):
            e["score"] = r

    def best(self) -> str | None:
        """The hypothesis with the best check score, else the one with the most net support, else None."""
        if not self.entries:
            return None
        scored = [(e["score"], h) for h, e in self.entries.items() if e["score"] is not None]
        if scored:
            return max(scored)[1]
        return max(self.entries, key=lambda h: len(self.entries[h]["for"]) - len(self.entries[h]["against"]))

    def render(self) -> str:
        if not self.entries:
            return "(no hypotheses yet)"
        lines = []
        for h, e in self.entries.items():
            s = "-" if e["score"] is None else f"{e['score']:.2f}"
            lines.append(f"- {h!r}: check r={s}, {len(e['for'])} for, {len(e['against'])} against")
        return "\n".join(lines)


class Toolbox:
    """The tools over one Target: exemplars from a corpus, experiments on the subject, scoring by a simulator."""

    def __init__(self, subject: Subject, target: Target, corpus: Sequence[str] | Sequences, simulator, explainer=None,
                 oracle=None, summarise: Callable[[str], str] | None = None, window: int = 32, n_check: int = 8,
                 max_chars: int = 1500):
        self.subject, self.target, self.simulator, self.explainer = subject, target, simulator, explainer
        self.oracle, self.summarise_fn, self.max_chars = oracle, summarise, max_chars
        self.ledger = Ledger()
        self.last_r: float | None = None  # the r of the latest score_hypothesis call
        if not isinstance(corpus, Sequences):
            seqs = target.read(list(corpus))
            corpus = Sequences([t for t, _ in seqs], [v for _, v in seqs])
        wins = make_windows(corpus, window)
        self.split = {s: [w for w in wins if SPLITS[w.text % len(SPLITS)] == s] for s in set(SPLITS)}
        self.top = max((w.max for w in wins), default=0.0)
        if self.top <= 0:
            raise DataError(f"feature {target.id} never fires (max {self.top:.3g}) on the {len(corpus.tokens)} corpus texts; "
                            "give a larger or different corpus")
        self.n_texts = len(corpus.tokens)
        self.n_check = n_check

    # -- held-out sets
    def scoring_windows(self, split: str, n: int | None = None) -> list[tuple[list[str], np.ndarray]]:
        """n activating windows (strongest first) + n others of a split, as (tokens, values)."""
        n = n or self.n_check
        wins = self.split[split]
        act = sorted([w for w in wins if w.max > 0], key=lambda w: -w.max)[:n]
        rest = [w for w in wins if w.max <= 0][:n] or sorted(wins, key=lambda w: w.max)[:n]
        seen, out = set(), []
        for w in act + rest:
            if (w.text, w.start) not in seen:
                seen.add((w.text, w.start))
                out.append((w.tokens, w.values))
        return out

    def exemplars(self, n: int, which: str = "top") -> list[Window]:
        act = sorted([w for w in self.split["explore"] if w.max > 0], key=lambda w: -w.max)
        if which == "top":
            return act[:n]
        bins = {"high": (0.75, 1.01), "mid": (0.5, 0.75), "low": (0.25, 0.5), "weak": (0.0, 0.25)}
        if which == "zero":
            return [w for w in self.split["explore"] if w.max <= 0][:n]
        if which not in bins:
            raise ToolError(f"which={which!r}: expected top, high, mid, low, weak or zero")
        lo, hi = bins[which]
        return [w for w in act if lo * self.top < w.max <= hi * self.top][:n]

    # -- tools
    def top_examples(self, n: int = 4, which: str = "top") -> str:
        wins = self.exemplars(int(n), which)
        if not wins:
            return f"no {which} exemplars in the explore split"
        head = f"feature {self.target.id}, max value {self.top:.2f}; {which} windows (<<fired>>(value)):"
        return head + "\n" + "\n".join(f"{i + 1}. [max {w.max:.2f}] {marked(w, self.top)}" for i, w in enumerate(wins))

    def activations(self, text: str) -> str:
        if not text.strip():
            raise ToolError("text is empty: give the text to read the feature on")
        toks, vals = self.target.read([text])[0]
        return f"max {float(vals.max()) if len(vals) else 0:.2f}: " + per_token(toks, vals)

    def edit(self, text: str, old: str, new: str) -> str:
        if not old or old not in text:
            raise ToolError(f"old={old!r} does not occur in the text; give a word or phrase that does")
        edited = text.replace(old, new, 1)
        (ta, va), (tb, vb) = self.target.read([text, edited])
        return (f"original max {float(va.max()):.2f}: {per_token(ta, va)}\n"
                f"edited   max {float(vb.max()):.2f}: {per_token(tb, vb)}")

    def steer(self, prompt: str, value: float = 10.0, max_new_tokens: int = 24) -> str:
        if self.target.set_value is None:
            raise ToolError(f"feature {self.target.id} is not a model feature; it cannot be clamped")
        s = self.subject
        plain = s.generate(prompt, max_new_tokens=int(max_new_tokens))
        with self.target.set_value(float(value)):
            steered = s.generate(prompt, max_new_tokens=int(max_new_tokens))
            after = next_logits(s, prompt)
        shift = after - next_logits(s, prompt)  # [vocab]
        up, down = shift.topk(6), (-shift).topk(6)
        tok = s.tokenizer
        fmt = lambda ix, vs: ", ".join(f"{tok.decode([i])!r}{v:+.1f}" for i, v in zip(ix.tolist(), vs.tolist()))  # noqa: E731
        return (f"clamped to {float(value):g} at every token\nplain:   {plain!r}\nsteered: {steered!r}\n"
                f"next-token logits up: {fmt(up.indices, up.values)}\ndown: {fmt(down.indices, -down.values)}")

    def logit_lens(self, n: int = 8) -> str:
        if self.target.direction is None:
            raise ToolError(f"feature {self.target.id} has no write direction; logit lens needs one")
        lens = logit_lens(self.subject, self.target.direction, int(n))
        fmt = lambda xs: ", ".join(f"{t!r}" for t, _ in xs)  # noqa: E731
        return f"promotes: {fmt(lens.promoted)}\nsuppresses: {fmt(lens.suppressed)}"

    def get_oracle(self):
        """The activation oracle (loaded on first use when given as a zero-argument factory)."""
        if self.oracle is None:
            raise ToolError("no activation oracle is loaded for this model")
        if callable(self.oracle) and not hasattr(self.oracle, "ask"):
            self.oracle = self.oracle()
        return self.oracle

    def ask_oracle(self, question: str, n: int = 2, on: str = "contexts") -> str:
        oracle = self.get_oracle()
        if on == "direction":
            from .baselines import ask_direction

            if self.target.direction is None or self.target.direction.shape[0] != oracle.subject.d_model:
                raise ToolError(f"feature {self.target.id} has no residual-stream direction to inject")
            return f"- direction injected: {ask_direction(oracle, self.target.direction, question)}"
        if on != "contexts":
            raise ToolError(f"on={on!r}: expected contexts or direction")
        rows = []
        for ctx in self.firing_contexts(int(n)):
            a = oracle.ask(ctx, question, read=(-1, None), max_new_tokens=24)
            rows.append(f"- at {ctx[-40:]!r}: {a.text}")
        return "\n".join(rows) or "no firing contexts"

    def firing_contexts(self, n: int) -> list[str]:
        """The text of the top explore windows up to (and including) their strongest token."""
        out = []
        for w in self.exemplars(n):
            out.append("".join(w.tokens[: int(np.argmax(w.values)) + 1]))
        return out

    def explain(self, n: int = 3) -> str:
        if self.explainer is None:
            raise ToolError("no explainer is loaded")
        wins = [(w.tokens, w.values) for w in self.exemplars(8) + self.exemplars(2, "zero")]
        cands = self.explainer.explain(wins, k=int(n), seed=0)
        return "candidates: " + "; ".join(repr(c) for c in cands) if cands else "the explainer gave nothing usable"

    def score_hypothesis(self, explanation: str) -> str:
        if not explanation.strip():
            raise ToolError("explanation is empty")
        wins = self.scoring_windows("check")
        r = simulation_r(self.simulator, explanation, wins)
        self.ledger.scored(explanation, r)
        self.last_r = r
        preds = self.simulator.simulate(explanation, [t for t, _ in wins])
        misses = []  # the tokens the simulation gets most wrong
        for (toks, vals), p in zip(wins, preds):
            for t, v, q in zip(toks, vals, p):
                misses.append((abs(v / self.top * 10 - q), t, v / self.top * 10, q))
        misses.sort(key=lambda m: -m[0])
        worst = ", ".join(f"{show_token(t)!r} true {v:.0f} predicted {q:.0f}" for _, t, v, q in misses[:5])
        rs = "undefined" if r is None else f"{r:.3f}"
        return f"simulation r on held-out check windows: {rs}\nlargest misses (0-10 scale): {worst}"

    def summarise(self) -> str:
        if self.summarise_fn is None:
            raise ToolError("no summariser is available")
        wins = self.exemplars(6)
        text = "\n".join(f"{i + 1}. {marked(w, self.top)}" for i, w in enumerate(wins))
        return self.summarise_fn(text)

    def note(self, hypothesis: str, evidence: str, supports: bool = True) -> str:
        self.ledger.note(hypothesis.strip(), evidence, bool(supports))
        return "ledger:\n" + self.ledger.render()

    # -- dispatch
    def call(self, name: str, args: dict) -> str:
        """Run a tool by name; any expected mistake comes back as an 'error: ...' string the LLM can read."""
        fn = TOOLS.get(name)
        if fn is None:
            return f"error: unknown tool {name!r}; tools: {', '.join(sorted(TOOLS))}"
        if not isinstance(args, dict):
            return f"error: arguments of {name} must be a JSON object, got {type(args).__name__}"
        schema = SCHEMAS[name]["function"]["parameters"]
        missing = [k for k in schema.get("required", []) if k not in args]
        extra = [k for k in args if k not in schema["properties"]]
        if missing:
            return (f"error: {name} needs {schema.get('required', [])}, missing {missing}; "
                    f"parameters: {list(schema['properties'])}")
        note = f"(ignored unknown argument(s) {extra}; parameters: {list(schema['properties'])})\n" if extra else ""
        args = {k: v for k, v in args.items() if k not in extra}
        for k, v in args.items():
            want = schema["properties"][k]["type"]
            if not isinstance(v, JSON_TYPES[want]) or (want != "boolean" and isinstance(v, bool)):
                return f"error: {name}: {k} must be a {want}, got {json.dumps(v)[:60]}"
        try:
            out = fn(self, **args)
        except (DataError, ValueError, TypeError, IndexError) as e:
            return f"error: {e}"
        out = note + out
        return out if len(out) <= self.max_chars else out[: self.max_chars] + " …(cut)"


@torch.no_grad()
def next_logits(subject: Subject, prompt: str) -> torch.Tensor:
    """[vocab] the next-token logits after a chat-formatted prompt."""
    text = subject.chat(prompt)
    enc = subject.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(subject.device)
    return subject.model(**enc, use_cache=False).logits[0, -1].float().cpu()


def fn_schema(name: str, description: str, props: dict, required: Sequence[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(required)}}}


S, N, B = {"type": "string"}, {"type": "number"}, {"type": "boolean"}
JSON_TYPES = {"string": str, "number": (int, float), "boolean": bool}
SCHEMAS: dict[str, dict] = {s["function"]["name"]: s for s in [
    fn_schema("top_examples", "Exemplar windows of the feature from a corpus, firing tokens marked <<x>>(value). "
              "which: top | high | mid | low | weak (quantiles of the max) | zero (windows where it is silent).",
              {"n": N, "which": S}, []),
    fn_schema("activations", "The feature's value at every token of a text you write.", {"text": S}, ["text"]),
    fn_schema("edit", "Replace `old` by `new` in a text and compare the feature's values before and after.",
              {"text": S, "old": S, "new": S}, ["text", "old", "new"]),
    fn_schema("steer", "Clamp the feature to `value` at every token while the model answers `prompt`: the generation "
              "with and without, and the next-token logits it raises and lowers.", {"prompt": S, "value": N},
              ["prompt"]),
    fn_schema("logit_lens", "The tokens the feature's write direction promotes and suppresses.", {"n": N}, []),
    fn_schema("ask_oracle", "Ask an activation oracle a question about the activations where the feature fires "
              "most (e.g. 'What concept is here?'); n: how many firing contexts; on: contexts (default) or direction "
              "(the feature's write direction injected instead).", {"question": S, "n": N, "on": S}, ["question"]),
    fn_schema("explain", "Candidate explanations from the trained explainer, written from the top exemplars.",
              {"n": N}, []),
    fn_schema("score_hypothesis", "Score an explanation by simulation on held-out windows: Pearson r between "
              "simulated and true values (1 is perfect), and where the simulation is most wrong.",
              {"explanation": S}, ["explanation"]),
    fn_schema("summarise", "A short description of the top exemplars by a reader who has not seen your hypotheses.",
              {}, []),
    fn_schema("note", "Record evidence for (supports=true) or against a hypothesis in your ledger.",
              {"hypothesis": S, "evidence": S, "supports": B}, ["hypothesis", "evidence"]),
    fn_schema("final_answer", "Finish: your explanation of what the feature fires on, and the evidence for it.",
              {"explanation": S, "evidence": S}, ["explanation"]),
]}
TOOLS: dict[str, Callable] = {n: getattr(Toolbox, n) for n in SCHEMAS if n != "final_answer"}
TOOLS["final_answer"] = lambda box, explanation, evidence="": f"final answer recorded: {explanation!r}"


def load_json_args(raw) -> tuple[dict | None, str | None]:
    """Tool-call arguments (a JSON string or an object) -> (dict, None) or (None, why not)."""
    if isinstance(raw, dict):
        return raw, None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    try:
        obj = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        return None, f"arguments are not valid JSON ({e}): {str(raw)[:120]!r}"
    return (obj, None) if isinstance(obj, dict) else (None, f"arguments must be a JSON object, got {str(raw)[:80]!r}")
