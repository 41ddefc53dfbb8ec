"""The helpers of benchmarks/autointerp_latents.py: windows from sparse SAE codes, window picking, trainset lines."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as when run as a script: it imports common
    try:
        spec = importlib.util.spec_from_file_location("bench_autointerp_latents", ROOT / "benchmarks" / "autointerp_latents.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_window_ids_skip_the_sink_and_short_tails(bench):
    # text 0: positions 0..20 (window of 4 from position 1 -> 1-4, 5-8, ..., 17-20); text 1: positions 0..5
    text = torch.tensor([0] * 21 + [1] * 6)
    pos = torch.tensor(list(range(21)) + list(range(6)))
    wid = bench.window_ids(text, pos, window=4, min_window=3)
    assert wid[0] == -1 and wid[21] == -1  # position 0 of each text
    assert wid[1:5].tolist() == [0] * 4 and wid[17:21].tolist() == [4] * 4
    assert wid[22:26].tolist() == [5] * 4 and wid[26] == -1  # text 1's tail of one token is dropped
    assert int(wid.max()) == 5


def test_window_max_matches_a_dense_recomputation(bench):
    g = torch.Generator().manual_seed(0)
    n, width, k = 40, 16, 3
    idx = torch.stack([torch.randperm(width, generator=g)[:k] for _ in range(n)]).to(torch.int32)  # [n, k]
    vals = torch.rand(n, k, generator=g)
    wid = torch.tensor([-1] + [i // 8 for i in range(n - 1)])
    wmax = bench.window_max(wid, idx, vals, width)
    dense = torch.zeros(n, width).scatter_(1, idx.long(), vals)  # [n, width]
    for w in range(int(wid.max()) + 1):
        assert torch.allclose(wmax[w], dense[wid == w].max(0).values)


def test_pick_windows_top_low_random_are_disjoint(bench):
    wmax = np.array([0, 9, 0, 1, 5, 0, 8, 2, 0, 0, 0, 0.5], float)
    got = bench.pick_windows(wmax, n_top=3, n_low=2, n_random=4, rng=np.random.default_rng(0))
    assert got[:3] == [1, 6, 4]
    assert set(got[3:5]) <= {3, 7, 11}  # fire at most 0.4 x 9
    assert len(set(got)) == len(got) == 9


def test_feature_line_is_a_trainset_line(bench):
    wins = [{"tokens": ["a", "b"], "values": [0.0, 2.0]}]
    found = {"explanation": "the letter b", "candidates": [{"text": "letters", "select_r": 0.2},
                                                           {"text": "the letter b", "select_r": 0.9},
                                                           {"text": "nothing", "select_r": None}]}
    line = bench.feature_line(7, "resid.12", wins, 2.0, found)
    assert line["explanation"] == "the letter b" and line["explanations"] == ["the letter b", "letters", "nothing"]
    assert line["select_r"] == [0.9, 0.2, None]
    assert line["family"] == "latent7" and line["scale"] == 2.0 and line["windows"] == wins
    assert "explanation" not in bench.feature_line(7, "resid.12", wins, 2.0, None)


def test_token_list_explanation_names_the_peak_tokens(bench):
    wins = [{"tokens": [" the", " Baseball", " game"], "values": [0, 5, 1]},
            {"tokens": [" baseball", "!"], "values": [3, 0]},
            {"tokens": ["1", " often"], "values": [0, 2]},
            {"tokens": ["x"], "values": [0]}]
    assert bench.token_list_explanation(wins) == 'words like "Baseball" or "often"'
    assert bench.token_list_explanation(wins[3:]) is None
