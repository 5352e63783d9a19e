"""A bounded fuzz of spec loading: hundreds of malformed specs, made by seeded mutations of
a valid one, each through `stepscope plan` in this process. Every one must be accepted
(exit 0) or refused in one line (exit 2): never a traceback, never an "unexpected" error
(what the CLI prints, with exit code 1, for an exception that is not the user's to fix),
never slow, never a memory blow-up. Deterministic: the same cases on every run."""

from __future__ import annotations

import collections
import random
import resource
import sys
import time
import tracemalloc

import yaml
from click.testing import CliRunner

from stepscope.orchestrator.cli import cli

CASES = 420
SEED = 8
PER_CASE_S = 5.0  # generous for a slow CI core; a case takes milliseconds
BOMB_PEAK_BYTES = 32 * 2**20  # what reading and refusing an alias bomb may allocate

VALID = """\
name: fuzz
description: a spec to mutate
fixed:
  iterations: 3
  warmup: 1
grid:
  workload: [mlp, gpt]
  batch_size: [4, 8]
  precision: [fp32, bf16]
exclude:
  - {workload: gpt, batch_size: 8}
gpus: any
repeats: 2
isolation: process
"""

JUNK = [
    None, True, False, 0, -1, 1.5, -0.0, 2**31, 2**63 - 1, 2**63, 2**64, 10**40, -(10**40), 1e308, float("inf"),
    float("nan"), "", " ", "x" * 5000, "ü∂ƒ", "\u202eevil", "a\nb", "a/b", "..", "\x00", "💥" * 50, "1e-3",
    "2024-01-01", "null", "~", "yes", "mlp", "m:b", "os:system", ":", "a" * 65, [], {}, [[1]], [None], {"a": 1},
    {"a": {"b": [1, 2]}}, list(range(200)), [True, 1], [1, 1.0], ["1e-3", 0.001], [16, 16],
]
TAGS = ["!!binary", "!!set", "!!timestamp", "!!omap", "!!pairs", "!!python/object:os.system", "!!python/name:os.system",
        "!foo", "!!str", "!!int", "!!float", "!!bool", "!!null", "!!map", "!!seq", "!", "!<tag:x.org,2002:y>"]
SYNTAX = list(":-[]{}&*!|>'\"#%@`,?\t\n ") + ["\n  ", ": ", "- ", "<<: "]


def _paths(doc: object, path: tuple = ()) -> list[tuple]:
    """Every path to a value in the parsed document."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*path, i))
    return out


def _set(doc: object, path: tuple, value: object) -> object:
    if not path:
        return value
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


def _delete(doc: object, path: tuple) -> object:
    if not path:
        return {}
    target = doc
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return doc


def _dump(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10**6)


def _doc() -> dict:
    return yaml.safe_load(VALID)


def _laughs(rng: random.Random) -> tuple[str, str]:
    levels, width = rng.randint(3, 12), rng.randint(2, 12)
    text = f"l0: &l0 [{', '.join(['lol'] * width)}]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n" for i in range(1, levels))
    return text, f"*l{levels - 1}"


# ---------------------------------------------------------------- mutations: (rng) -> text or bytes


def wrong_type(rng):
    doc = _doc()
    return _dump(_set(doc, rng.choice(_paths(doc)), rng.choice(JUNK)))


def missing_key(rng):
    doc = _doc()
    return _dump(_delete(doc, rng.choice(_paths(doc)[1:])))


def extra_key(rng):
    doc = _doc()
    mappings = [p for p in _paths(doc) if isinstance(_get(doc, p), dict)]
    target = _get(doc, rng.choice(mappings))
    target[rng.choice(["depth", "width", "color", "on", "seq_len", "x" * 200, "n_head", "💥", "a.b"])] = rng.choice(JUNK)
    return _dump(doc)


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def huge_number(rng):
    key = rng.choice(["batch_size", "iterations", "warmup", "seed", "num_threads", "repeats", "lr", "width"])
    number = rng.choice([2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**19, 10**100, -(2**63) - 1, 1e308, 10**4000])
    if key == "repeats":
        return VALID.replace("repeats: 2", f"repeats: {number}")
    return VALID.replace("fixed:\n", f"fixed:\n  {key}: {number}\n")


def unicode_text(rng):
    text = VALID
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(["é", "\u200b", "\u202e", "💥", "\ufeff", "\u2028", "\x85", "Ω", "\U0001F600"]) + text[i:]
    return text


def deep_nesting(rng):
    depth = rng.choice([5, 20, 31, 33, 40, 200, 5000, 100_000])
    kind = rng.choice(["[]", "{}"])
    value = "[" * depth + "1" + "]" * depth if kind == "[]" else "{a: " * depth + "1" + "}" * depth
    return VALID.replace("  precision: [fp32, bf16]", f"  precision: {value}")


def alias_bomb(rng):
    head, alias = _laughs(rng)
    where = rng.choice(["grid_value", "fixed", "exclude", "description", "gpus", "name"])
    body = {
        "grid_value": VALID.replace("precision: [fp32, bf16]", f"precision: {alias}"),
        "fixed": VALID.replace("  warmup: 1", f"  junk: {alias}"),
        "exclude": VALID.replace("  - {workload: gpt, batch_size: 8}", f"  - {alias}"),
        "description": VALID.replace("description: a spec to mutate", f"description: {alias}"),
        "gpus": VALID.replace("gpus: any", f"gpus: {alias}"),
        "name": VALID.replace("name: fuzz", f"name: {alias}"),
    }[where]
    # The anchors sit at the top level, keys a spec does not take: refused for that too, but
    # only once the whole document (the bomb included) has been read.
    return head + body


def recursive_alias(rng):
    return rng.choice([
        VALID.replace("grid:\n", "grid: &g\n").replace("  precision: [fp32, bf16]", "  precision: [fp32, bf16]\n  x: *g"),
        VALID.replace("precision: [fp32, bf16]", "precision: &p [fp32, *p]"),
        VALID.replace("exclude:\n", "exclude: &e\n").replace("  - {workload: gpt, batch_size: 8}", "  - *e"),
    ])


def duplicate_key(rng):
    lines = VALID.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])


def tagged(rng):
    lines = VALID.splitlines(keepends=True)
    candidates = [i for i, ln in enumerate(lines) if ": " in ln]
    i = rng.choice(candidates)
    key, _, value = lines[i].partition(": ")
    lines[i] = f"{key}: {rng.choice(TAGS)} {value}"
    return "".join(lines)


def binary_junk(rng):
    data = bytearray(VALID.encode())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def truncated(rng):
    return VALID[: rng.randrange(len(VALID))]


def syntax_flip(rng):
    text = VALID
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(SYNTAX) + text[i + rng.randint(0, 2):]
    return text


def big_grid(rng):
    n = rng.choice([10, 100, 1000, 2000])
    keys = rng.randint(1, 4)
    extra = "".join(f"  {k}: [{', '.join(str(i + 1) for i in range(n))}]\n"
                    for k in ["batch_size", "width", "depth", "seed"][:keys])
    return VALID.replace("  batch_size: [4, 8]\n", "").replace("  workload: [mlp, gpt]", "  workload: [mlp]") \
        .replace("exclude:\n  - {workload: gpt, batch_size: 8}\n", "").replace("grid:\n", "grid:\n" + extra)


def huge_exclude(rng):
    n = rng.choice([10, 999, 1001, 2000])
    entries = "".join(f"  - {{workload: gpt, batch_size: {rng.choice([4, 8])}}}\n" for _ in range(n))
    return VALID.replace("  - {workload: gpt, batch_size: 8}\n", entries)


def yaml_pitfalls(rng):
    return rng.choice([
        VALID.replace("  warmup: 1", "  warmup: 1\n  d: 2024-01-01"),
        VALID.replace("  warmup: 1", "  warmup: 1\n  t: 2001-12-14t21:59:43.10-05:00"),
        VALID.replace("precision: [fp32, bf16]", "precision: [fp32, bf16]\n  lr: [1, 1.0]"),
        VALID.replace("precision: [fp32, bf16]", "precision: [fp32, bf16]\n  lr: ['1e-3', 0.001]"),
        VALID.replace("batch_size: [4, 8]", "batch_size: [4, 4]"),
        VALID.replace("batch_size: [4, 8]", "batch_size: [4, 8.0]"),
        VALID.replace("batch_size: 8}", "batch_size: 8.0}"),
        VALID.replace("batch_size: 8}", "batch_size: true}"),
        VALID.replace("  warmup: 1", "  on: 1"),
        VALID.replace("  warmup: 1", "  1: 1"),
        VALID.replace("  warmup: 1", "  ? [a]\n  : 1"),
        VALID.replace("  warmup: 1", "  <<: {warmup: 1}"),
        VALID.replace("  warmup: 1", "  <<: 7"),
        VALID.replace("gpus: any", "gpus: [A100, A100]"),
        VALID.replace("gpus: any", 'gpus: ["A100\\n"]'),
        VALID.replace("name: fuzz", 'name: "fuzz\\n"'),
        VALID.replace("name: fuzz", "name: fuzz/../x"),
        VALID.replace("name: fuzz", f"name: {'n' * 65}"),
        VALID + "---\nname: second\n",
        VALID.replace("isolation: process", "isolation: !!binary cHJvY2Vzcw=="),
        "",
        "# only a comment\n",
        "[]\n",
        "name\n",
        "42\n",
    ])


def combined(rng):
    text = rng.choice([wrong_type, duplicate_key, tagged, yaml_pitfalls, unicode_text])(rng)
    for _ in range(rng.randint(1, 2)):
        if isinstance(text, bytes):
            break
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(SYNTAX) + text[i:]
    return text


MUTATIONS = [wrong_type, missing_key, extra_key, huge_number, unicode_text, deep_nesting, alias_bomb,
             recursive_alias, duplicate_key, tagged, binary_junk, truncated, syntax_flip, big_grid, huge_exclude,
             yaml_pitfalls, combined]


def _cases():
    for i in range(CASES):
        mutate = MUTATIONS[i % len(MUTATIONS)]
        yield i, mutate.__name__, mutate(random.Random(SEED * 100_003 + i))


def test_malformed_specs_are_accepted_or_refused_in_one_line(tmp_path, record_property):
    runner = CliRunner()
    path = tmp_path / "spec.yaml"
    tally: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for i, kind, text in _cases():
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        bomb = kind == "alias_bomb"
        if bomb:
            tracemalloc.start()
        began = time.perf_counter()
        result = runner.invoke(cli, ["plan", str(path)])
        took = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1] if bomb else 0
        if bomb:
            tracemalloc.stop()
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        where = f"case {i} ({kind}, {len(text)} bytes)"
        if result.exit_code == 0:
            tally["accepted"] += 1
            if not result.stdout.startswith("fuzz: "):
                failures.append(f"{where}: accepted, but printed {result.stdout[:200]!r}")
        elif result.exit_code == 2:
            tally["refused"] += 1
            tally[f"refused: {kind}"] += 1
            if len(lines) != 1 or not lines[0].startswith("Error: ") or "Traceback" in result.stderr \
                    or lines[0].startswith("Error: unexpected ") or len(lines[0]) > 1000:
                failures.append(f"{where}: refused in {len(lines)} lines: {result.stderr[:500]!r}")
        else:
            tally[f"exit {result.exit_code}"] += 1
            failures.append(f"{where}: exit {result.exit_code}: {result.stderr[:500]!r} {result.exception!r}")
        if took > PER_CASE_S:
            failures.append(f"{where}: took {took:.1f}s")
        if peak > BOMB_PEAK_BYTES:
            failures.append(f"{where}: an alias bomb allocated {peak / 2**20:.0f} MiB")
    elapsed = time.perf_counter() - start
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))
    print(f"\nspec fuzz: {CASES} cases in {elapsed:.1f}s, max RSS +{rss_growth // 1024} MiB; {summary}", file=sys.stderr)
    record_property("spec_fuzz_tally", dict(tally))
    assert not failures, "\n".join(failures[:20])
    assert tally["accepted"] + tally["refused"] == CASES
    assert tally["accepted"] >= 10 and tally["refused"] >= CASES // 2, summary  # the mutations do bite, and not always
    assert rss_growth < 512 * 1024, f"max RSS grew by {rss_growth // 1024} MiB"
