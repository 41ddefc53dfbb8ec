"""Rebuild the default oracle's evaluation sets in research/oracle/ from the AO data directory.

    PYTHONPATH=src python research/oracle/make_eval_sets.py --data $AO            # writes the five .jsonl files
    PYTHONPATH=src python research/oracle/make_eval_sets.py --data $AO --check    # only compares, byte for byte

$AO is the Activation Oracles data directory (classification_datasets/, ...); without --data,
$METALENS_AO_DATA is used. The
seeds are the ones `metalens oracle train` uses for its final report sets (cfg.seed + 2 for the
test items, + 3 for the probe's train items, cfg.seed = 0); the 360-item held-out set and the
relation set were drawn with seed 7. Every file reads the last two context tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metalens.oracle.tasks import (OracleDataError, available_tasks, default_data_dir, relation_examples,
                                   save_jsonl, yes_no_examples)

HERE = Path(__file__).parent
READ = (-2, None)
HELDOUT_FAMILIES = ("singular_plural", "engels")


def build(data: Path) -> dict[str, list]:
    """{file name: examples} for the five evaluation files."""
    tasks = available_tasks(data)
    trained = [t.name for t in tasks if t.family not in HELDOUT_FAMILIES]
    held = [t.name for t in tasks if t.family in HELDOUT_FAMILIES]
    return {
        "eval_heldout.jsonl": yes_no_examples(data, held, 40, 2, READ, split="test"),  # 120 items
        "eval_trained.jsonl": yes_no_examples(data, trained, 12, 2, READ, split="test"),  # 84 items
        "probe_train.jsonl": yes_no_examples(data, trained + held, 100, 3, READ, split="train"),
        "eval_heldout_big.jsonl": yes_no_examples(data, held, 200, 7, READ, split="test"),  # 360 items
        "eval_relations.jsonl": relation_examples(data, 200, 7, READ, split="test"),  # 200 items
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="AO data dir (default: $METALENS_AO_DATA)")
    ap.add_argument("--check", action="store_true", help="compare with the files here instead of writing them")
    args = ap.parse_args()
    try:
        data = args.data or default_data_dir()
    except OracleDataError as e:
        print(e, file=sys.stderr)
        return 2
    sets = build(data)
    bad = 0
    for name, exs in sets.items():
        if args.check:
            tmp = save_jsonl(exs, HERE / f".{name}.check")
            same = tmp.read_bytes() == (HERE / name).read_bytes()
            tmp.unlink()
            print(f"{name}: {len(exs)} items, {'identical' if same else 'DIFFERENT'}")
            bad += not same
        else:
            save_jsonl(exs, HERE / name)
            print(f"wrote {HERE / name} ({len(exs)} items)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
