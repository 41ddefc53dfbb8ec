"""Activation oracles: the subject plus a LoRA adapter, answering questions about its own activations."""

from .ask import Answer, Oracle
from .tasks import Example, OracleDataError, load_jsonl, save_jsonl

__all__ = ["Answer", "Example", "Oracle", "OracleDataError", "load_jsonl", "save_jsonl"]
