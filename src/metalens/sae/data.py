"""Offline English text for training and evaluating SAEs when no corpus is given.

`corpus_texts()` cuts the Python documentation topics that ship with every CPython
(`pydoc_data.topics`, ~465k characters of prose about the language, with some code) into
paragraph-aligned chunks. It is small and narrow (one subject), but it needs no download.
"""

from __future__ import annotations

import re


def corpus_texts(chunk_chars: int = 400, min_chars: int = 80) -> list[str]:
    """Deterministic list of text chunks of about `chunk_chars` characters, in a fixed order."""
    from pydoc_data.topics import topics

    chunks: list[str] = []
    for key in sorted(topics):
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", topics[key])]
        buf = ""
        for p in paras:
            if set(p) <= set("*=-~^ "):  # rst underlines
                continue
            if buf and len(buf) + len(p) > chunk_chars:
                chunks.append(buf)
                buf = ""
            buf = f"{buf} {p}".strip()
        if buf:
            chunks.append(buf)
    return [c[: 2 * chunk_chars] for c in chunks if len(c) >= min_chars]
