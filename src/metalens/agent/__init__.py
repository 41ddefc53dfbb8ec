"""The interpretability agent: an LLM that runs experiments on one feature through metalens's tools and
answers with an explanation scored by simulation on held-out text (targets.py, tools.py, loop.py,
transcript.py, baselines.py)."""

from .loop import AgentConfig, AgentResult, EndpointChat, LocalChat, run_agent
from .targets import Target, direction_target, parse_target, rule_target
from .tools import Toolbox

__all__ = ["AgentConfig", "AgentResult", "EndpointChat", "LocalChat", "Target", "Toolbox", "direction_target",
           "parse_target", "rule_target", "run_agent"]
