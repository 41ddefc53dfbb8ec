"""The interpretability agent: an LLM that runs experiments on one feature through metalens's tools and
answers with an explanation scored by simulation on held-out text (tools.py, loop.py, transcript.py)."""

from .loop import AgentConfig, AgentResult, EndpointChat, LocalChat, run_agent
from .tools import Target, Toolbox, direction_target, parse_target, rule_target

__all__ = ["AgentConfig", "AgentResult", "EndpointChat", "LocalChat", "Target", "Toolbox", "direction_target",
           "parse_target", "rule_target", "run_agent"]
