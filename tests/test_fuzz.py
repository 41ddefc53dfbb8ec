"""Property test: random bytes, random JSON and random numeric options fed to every file-reading and
option-parsing entry point raise only metalens's own errors (or click usage errors, exit 2), never a
raw KeyError / TypeError / AttributeError / traceback. Plain `random` with a fixed seed, bounded cases."""

import json
import random

import pytest
import typer
from typer.testing import CliRunner

from metalens.cli import app
from metalens.errors import MetalensError

SEED = 20260425
COUNTS = {}  # entry point -> cases run (printed at the end of the session for the report)


def count(name: str, n: int = 1) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


def rand_scalar(rng: random.Random):
    return rng.choice([
        None, True, False, 0, -1, 1, 2, 7, 10**12, -(10**12), 0.5, -0.0, 1e308, float("nan"), float("inf"), "",
        " ", "resid.1", "last", "all", "x" * rng.randint(0, 40), "\u2028", "\x00", "é", "[1,2]", "-1",
    ])


def rand_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rand_scalar(rng)
    if r < 0.75:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["text", "context", "question", "answer", "read", "choices", "task", "pos", "neg", "role", "content",
            "layers", "d_in", "d_sae", "k", "architecture", "metadata", "hook_name", "shards", "sites", "x"]
    return {rng.choice(keys): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def rand_bytes(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    if kind < 0.6:
        return "\n".join(json.dumps(rand_json(rng), allow_nan=True) for _ in range(rng.randint(0, 6))).encode()
    if kind < 0.8:
        good = '{"text": "a", "context": "b", "question": "c", "pos": "d", "neg": "e"}\n'
        data = bytearray((good * rng.randint(1, 4)).encode())
        for _ in range(rng.randint(1, 4)):  # flip, cut or insert a few bytes of valid rows
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                del data[i:]
                if not data:
                    break
            else:
                data[i:i] = bytes([rng.choice([0x0A, 0x0D, 0x22, 0x7B, 0x7D, 0x2C, 0xFF, 0xC3])])
        return bytes(data)
    return ("[" * rng.randint(1, 20000)).encode()  # deep nesting


def expect_own_error(fn, *args, **kw):
    """Call fn; it may succeed or raise a MetalensError (or a usage error of an option); anything else fails."""
    try:
        fn(*args, **kw)
    except (MetalensError, typer.BadParameter):
        pass


@pytest.fixture(scope="module")
def rng():
    return random.Random(SEED)


def test_fuzz_text_and_jsonl_readers(tmp_path, rng):
    from metalens.cli.steer import read_pairs
    from metalens.io import jsonl_objects, read_texts
    from metalens.oracle.tasks import load_jsonl

    for i in range(120):
        data = rand_bytes(rng)
        for suffix in (".txt", ".jsonl"):
            p = tmp_path / f"f{i}{suffix}"
            p.write_bytes(data)
            expect_own_error(read_texts, p, keep_blank=rng.random() < 0.5, limit=rng.choice([None, 0, 1, 3]))
            count("io.read_texts")
        p = tmp_path / f"f{i}.jsonl"
        expect_own_error(lambda: list(jsonl_objects(p)))
        expect_own_error(load_jsonl, p)
        expect_own_error(read_pairs, p)
        count("io.jsonl_objects")
        count("oracle.tasks.load_jsonl")
        count("cli.steer.read_pairs")


def test_fuzz_oracle_examples_fields(tmp_path, rng):
    from metalens.oracle.tasks import example_from_dict

    for _ in range(300):
        obj = {"context": rand_json(rng), "question": rand_json(rng)}
        for key in ("answer", "read", "choices", "task"):
            if rng.random() < 0.5:
                obj[key] = rand_json(rng)
        expect_own_error(example_from_dict, obj)
        count("oracle.tasks.example_from_dict")


def test_fuzz_store_manifests(tiny, tmp_path, rng):
    from metalens.store import MANIFEST, ActivationStore, capture_to_store

    capture_to_store(tiny, ["one two", "three four five"], ["resid.1"], tmp_path / "good", texts_per_shard=1,
                     progress=False)
    good = json.loads((tmp_path / "good" / MANIFEST).read_text())
    d = tmp_path / "s"
    d.mkdir()
    for f in (tmp_path / "good").glob("shard_*"):
        (d / f.name).write_bytes(f.read_bytes())
    for i in range(150):
        if rng.random() < 0.3:
            (d / MANIFEST).write_bytes(rand_bytes(rng))
        else:
            m = json.loads(json.dumps(good))
            for _ in range(rng.randint(1, 3)):
                key = rng.choice(list(m) + ["extra"])
                if rng.random() < 0.2 and key in m:
                    del m[key]
                elif key == "shards" and m.get("shards") and rng.random() < 0.7:
                    e = rng.choice(m["shards"])
                    e[rng.choice(list(e))] = rand_json(rng)
                else:
                    m[key] = rand_json(rng)
            (d / MANIFEST).write_text(json.dumps(m))

        def open_and_read():
            st = ActivationStore(d)
            st.load()
            for site in st.sites:
                st.mean(site)
                list(st.batches(site, 2))

        expect_own_error(open_and_read)
        count("store.ActivationStore")
    for i in range(30):  # shard bytes: random flips of the good shards (same size) and cuts
        (d / MANIFEST).write_text(json.dumps(good))
        for f in (tmp_path / "good").glob("shard_*"):
            data = bytearray(f.read_bytes())
            if rng.random() < 0.5:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                del data[rng.randrange(len(data)):]
            (d / f.name).write_bytes(bytes(data))
        expect_own_error(lambda: ActivationStore(d).load())
        count("store.read_shard")


def test_fuzz_sae_directories(tmp_path, rng):
    from metalens.sae.io import load_sae, save_sae
    from metalens.sae.model import Sae, SaeConfig

    save_sae(Sae(SaeConfig(d_in=8, width=16, k=2, site="resid.1")), tmp_path / "good")
    good_cfg = json.loads((tmp_path / "good" / "cfg.json").read_text())
    good_w = (tmp_path / "good" / "sae_weights.safetensors").read_bytes()
    d = tmp_path / "s"
    d.mkdir()
    for _ in range(120):
        cfg = json.loads(json.dumps(good_cfg))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(list(cfg) + ["k", "architecture"])
            if rng.random() < 0.2 and key in cfg:
                del cfg[key]
            else:
                cfg[key] = rand_json(rng)
        (d / "cfg.json").write_text(json.dumps(cfg) if rng.random() < 0.85 else rand_bytes(rng).decode("latin-1"))
        w = bytearray(good_w)
        if rng.random() < 0.4:
            w[rng.randrange(len(w))] = rng.randrange(256)
        if rng.random() < 0.2:
            del w[rng.randrange(len(w)):]
        (d / "sae_weights.safetensors").write_bytes(bytes(w))
        expect_own_error(load_sae, d)
        count("sae.io.load_sae")


def test_fuzz_oracle_settings_and_results_db(tmp_path, rng):
    from metalens.oracle.ask import Oracle
    from metalens.results import ResultsDB

    for i in range(40):
        d = tmp_path / f"o{i}"
        d.mkdir()
        (d / "oracle.json").write_bytes(rand_bytes(rng) if rng.random() < 0.5 else
                                        json.dumps({"layers": rand_json(rng), "model": rand_json(rng)}).encode())
        expect_own_error(Oracle.load, d)
        count("oracle.Oracle.load")
        p = tmp_path / f"r{i}.sqlite"
        p.write_bytes(rand_bytes(rng))
        expect_own_error(ResultsDB, p)
        count("results.ResultsDB")


def test_fuzz_option_parsers(rng):
    from metalens.cli.autointerp import parse_features
    from metalens.cli.common import at_least, parse_indices
    from metalens.cli.oracle import parse_read

    alphabet = "0123456789-,:.: abcresidneurons\u00e9\x00"
    for _ in range(300):
        spec = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        expect_own_error(parse_indices, spec)
        expect_own_error(parse_read, spec)
        expect_own_error(parse_features, spec)
        expect_own_error(at_least, "--n", rng.choice([-1, 0, 1, 2.5, -1e9, 10**9]), rng.choice([0, 1, 2]))
        count("cli option parsers", 4)


def test_fuzz_capture_library_arguments(tiny, tmp_path, rng):
    from metalens.store import capture_to_store

    for i in range(40):
        kw = dict(texts_per_shard=rng.choice([-2, 0, 1, 3, 10**9, 1.5, "2", None]),
                  batch_size=rng.choice([-1, 0, 1, 2, 10**6, 2.0, True]),
                  max_length=rng.choice([None, -1, 0, 1, 5, 10**9, 3.5]),
                  positions=rng.choice(["all", "last", "first", 0, -1, 99, slice(1, 3), None]),
                  dtype=rng.choice(["float32", "bfloat16", "int8", ""]))
        texts = rng.choice([["one two", "", "three"], [], [""], "a string", [5, "x"], ["ok"] * 3])
        sites = rng.choice([["resid.1"], ["resid.9"], [], ["resid.-1", "mlp.0"], "neurons.2"])
        expect_own_error(capture_to_store, tiny, texts, sites, tmp_path / f"s{i}", progress=False, **kw)
        count("store.capture_to_store")


def cli_ok(args) -> None:
    """Exit 0, or exit 2 with an error and no traceback."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code in (0, 2), (args, r.exit_code, r.output, r.exception)
    if r.exit_code == 2:
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        assert "Traceback" not in r.output and r.stderr.strip(), (args, r.output)


def test_fuzz_cli_numeric_options(tiny, tmp_path, rng):
    from metalens.store import capture_to_store

    model = tmp_path / "model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    (tmp_path / "t.txt").write_text("one two three\n\nfour five six seven\n")
    num = lambda *xs: rng.choice([*xs, -1, 0, "x", "1e3", "", "nan"])  # noqa: E731
    for i in range(16):
        cli_ok(["capture", "--texts", tmp_path / "t.txt", "--sites", rng.choice(["resid.1", "resid.7", "mlp.0,", ","]),
                "--out", tmp_path / f"c{i}", "--model", model, "--device", "cpu", "--json",
                "--batch-size", num(1, 2, 10**6), "--max-length", num(1, 4, 10**9), "--texts-per-shard", num(1, 2, 10**9),
                "--limit", num(1, 2)])
        count("cli capture options")
    capture_to_store(tiny, ["one two three four five six"] * 6, ["resid.1"], tmp_path / "store", progress=False)
    for i in range(12):
        cli_ok(["sae", "train", "--store", tmp_path / "store", "--site", "resid.1", "--out", tmp_path / f"sae{i}",
                "--model", model, "--device", "cpu", "--json", "--k", rng.choice(["1", "2,3", "0", "-1", "x", "", "9"]),
                "--width", num(4, 8), "--steps", num(1, 2), "--batch-size", num(4, 8, 10**6),
                "--lr", rng.choice(["0", "1e-3", "-1", "nan", "inf"]), "--eval-rows", num(1, 50)])
        count("cli sae train options")


def test_report_case_count():
    total = sum(COUNTS.values())
    print(f"\nfuzz cases: {total} ({', '.join(f'{k}: {v}' for k, v in sorted(COUNTS.items()))})")
    assert total > 1000
