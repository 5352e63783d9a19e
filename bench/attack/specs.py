"""Category `specs`: malformed or odd sweep specs through `stepscope plan SPEC`.

About 500 cases, each a spec file (or a special path) with what a careful `plan` should do:

- `refuse`: it is not a valid spec, or one `run` could not honour (a value that does not fit
  its int32/int64 column, a name that makes a partition directory over 255 bytes, two grid
  values that are the same after normalisation, a duplicate YAML key, a plan of over
  `HUGE_TRIALS` trials, an `exclude` list of over `HUGE_EXCLUDE` entries);
- `accept`: a valid spec, however odd its YAML;
- `either`: refusing and accepting are both defensible (seeded fuzz mutations, borderline
  values); only crashes, hangs and tracebacks count against it.

Families: YAML syntax and encodings, alias bombs, duplicate keys, odd YAML types (dates,
binary, sets, Norway booleans, non-string keys), names, the spec's structure, huge plans,
every common parameter with bad values (in `fixed` and in `grid`), every built-in workload's
parameters, custom workloads, special files (a
FIFO, /dev/zero, a symlink loop), and seeded random mutations of a valid spec.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from harness import Context, Proc, Result, pmap

TITLE = "malformed or odd sweep specs through `stepscope plan`"
CLASSES = ["clean exit 2", "accepted (valid)", "wrongly accepted", "wrongly refused", "traceback", "hang",
           "killed for memory", "unexpected", "other", "skipped"]
GOOD = {"clean exit 2", "accepted (valid)"}

HUGE_TRIALS = 100_000
HUGE_EXCLUDE = 10_000
N_FUZZ = 30

VALID = b"name: atk\nfixed: {iterations: 2, warmup: 0}\ngrid:\n  workload: [mlp]\n  batch_size: [2, 4]\n"
MODULE = "from stepscope import Workload\n\ndef build(params):\n    raise NotImplementedError\n"


@dataclass
class SpecCase:
    name: str
    text: bytes | None  # the spec's bytes; None for a special path (`kind`)
    expect: str  # refuse | accept | either
    kind: str = "file"  # file | missing | dir | fifo | devzero | devnull | devurandom | loop | longpath | dash
    files: dict[str, str] = field(default_factory=dict)  # more files beside the spec
    env: dict[str, str] = field(default_factory=dict)  # environment of the `plan` run


def _t(text: str) -> bytes:
    return text.encode("utf-8")


def _spec(fixed: str = "{iterations: 2, warmup: 0}", grid: str = "{workload: [mlp], batch_size: [2, 4]}",
          name: str = "atk", extra: str = "") -> bytes:
    return _t(f"name: {name}\nfixed: {fixed}\ngrid: {grid}\n{extra}")


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: `width`**`levels` leaves from a few hundred bytes."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _yaml_cases(rng: random.Random) -> list[SpecCase]:
    refuse = [
        ("empty file", b""),
        ("only a comment", b"# nothing here\n"),
        ("null document", b"null\n"),
        ("tilde document", b"~\n"),
        ("empty list document", b"[]\n"),
        ("list document", b"- name: atk\n- grid: {workload: [mlp]}\n"),
        ("integer document", b"42\n"),
        ("string document", b"'just a string'\n"),
        ("unclosed flow mapping", b"name: atk\ngrid: {workload: [mlp]\n"),
        ("unclosed quote", b"name: 'atk\ngrid: {workload: [mlp]}\n"),
        ("tab indentation", b"name: atk\ngrid:\n\tworkload: [mlp]\n"),
        ("bad indentation", b"name: atk\ngrid:\n    workload: [mlp]\n  batch_size: [2]\n"),
        ("two documents", b"---\nname: a\ngrid: {workload: [mlp]}\n---\nname: b\n"),
        ("document end then more", b"name: atk\n...\ngrid: {workload: [mlp]}\n"),
        ("bad YAML directive", b"%YAML 9.9\n---\nname: atk\n"),
        ("python object tag", b"!!python/object/apply:os.system ['echo pwned']\n"),
        ("python name tag", b"name: !!python/name:os.system\ngrid: {workload: [mlp]}\n"),
        ("unknown local tag", b"name: !custom atk\ngrid: {workload: [mlp]}\n"),
        ("unhashable key", b"name: atk\ngrid:\n  ? [a, b]\n  : [1]\n"),
        ("NUL byte", b"name: atk\ngrid: {workload: [mlp]}\n\x00\n"),
        ("control character", b"name: atk\x07\ngrid: {workload: [mlp]}\n"),
        ("invalid UTF-8", b"name: caf\xe9\ngrid: {workload: [mlp]}\n"),
        ("UTF-16 with BOM", "name: atk\ngrid: {workload: [mlp]}\n".encode("utf-16")),
        ("lone surrogate escape", b'name: "\\ud800"\ngrid: {workload: [mlp]}\n'),
        ("undefined alias", b"name: atk\ngrid: {workload: *nope}\n"),
        ("recursive alias list", b"&a [*a]\n"),
        ("recursive alias in grid", b"name: atk\ngrid: &g {workload: [mlp], x: *g}\n"),
        ("deep flow lists", b"name: atk\ngrid: {workload: " + b"[" * 20000 + b"]" * 20000 + b"}\n"),
        ("deep flow mappings", b"name: atk\nfixed: " + b"{a: " * 20000 + b"1" + b"}" * 20000 + b"\n"),
        ("deep block nesting", _t("name: atk\nfixed:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3000)) + " " * 3000 + "v: 1\n")),
        ("5 MB name", _t("name: " + "a" * 5_000_000 + "\ngrid: {workload: [mlp]}\n")),
        ("merge of a list", b"name: atk\nfixed: {<<: [1, 2]}\ngrid: {workload: [mlp]}\n"),
        ("flow mapping at top", b"{name: atk, grid: {workload: [mlp]}, name: btk}\n"),
    ]
    cases = [SpecCase(f"yaml: {n}", t, "refuse") for n, t in refuse]
    for i in range(8):  # random bytes
        cases.append(SpecCase(f"yaml: random bytes #{i}", rng.randbytes(rng.randint(1, 4096)), "refuse"))
    for i in range(4):  # random printable junk
        junk = "".join(rng.choice("abc:-[]{}#&*!|>'\"%@ \n\t0123456789") for _ in range(rng.randint(10, 400)))
        cases.append(SpecCase(f"yaml: random printable #{i}", _t(junk), "refuse"))
    accept = [
        ("UTF-8 BOM", b"\xef\xbb\xbf" + VALID),
        ("CRLF line ends", VALID.replace(b"\n", b"\r\n")),
        ("trailing spaces and comments", b"name: atk   # the name\nfixed: {iterations: 2, warmup: 0}  \ngrid:   # grid\n  workload: [mlp]\n  batch_size: [2, 4]\n"),
        ("explicit document markers", b"---\n" + VALID + b"...\n"),
        ("block sequences", b"name: atk\nfixed:\n  iterations: 2\n  warmup: 0\ngrid:\n  workload:\n    - mlp\n  batch_size:\n    - 2\n    - 4\n"),
        ("merge key in fixed", b"name: atk\nfixed: {<<: {iterations: 2}, warmup: 0}\ngrid: {workload: [mlp]}\n"),
        ("anchor on a key", b"name: atk\n&k grid: {workload: [mlp]}\n"),
        ("scalar aliases", b"name: atk\nfixed: {iterations: &n 2, warmup: 0}\ngrid: {workload: [mlp], batch_size: [*n, 4]}\n"),
        ("quoted keys", b'"name": atk\n"fixed": {"iterations": 2, "warmup": 0}\n"grid": {"workload": ["mlp"]}\n'),
        ("50k blank lines", b"\n" * 50000 + VALID),
        ("unicode description", _t("name: atk\ndescription: \u00e9t\u00e9 \u6e2c\u8a66 \U0001f525\n") + VALID[10:]),
        ("hex, octal and underscores", b"name: atk\nfixed: {iterations: 0x2, warmup: 00, seed: 1_000}\ngrid: {workload: [mlp]}\n"),
    ]
    cases += [SpecCase(f"yaml: {n}", t, "accept") for n, t in accept]
    # The anchors sit under `description`, which comes first in the text (an alias needs its
    # anchor before it) but is validated last, so the field under attack is read first.
    anchors = "description:\n" + "".join("  " + ln + "\n" for ln in _bomb().splitlines())
    for where, body in [
        ("name", "name: *a8\ngrid: {workload: [mlp]}\n"),
        ("fixed value", "name: atk\nfixed: {iterations: *a8}\ngrid: {workload: [mlp]}\n"),
        ("grid value", "name: atk\ngrid: {workload: [mlp], batch_size: *a8}\n"),
        ("grid list item", "name: atk\ngrid: {workload: [mlp, *a8]}\n"),
        ("gpus", "name: atk\ngrid: {workload: [mlp]}\ngpus: *a8\n"),
        ("gpus item", "name: atk\ngrid: {workload: [mlp]}\ngpus: [A100, *a8]\n"),
        ("repeats", "name: atk\ngrid: {workload: [mlp]}\nrepeats: *a8\n"),
        ("isolation", "name: atk\ngrid: {workload: [mlp]}\nisolation: *a8\n"),
        ("exclude", "name: atk\ngrid: {workload: [mlp]}\nexclude: *a8\n"),
        ("exclude value", "name: atk\ngrid: {workload: [mlp]}\nexclude: [{workload: *a8}]\n"),
        ("as a key", "name: atk\ngrid: {workload: [mlp]}\n? *a8\n: 1\n"),
    ]:
        cases.append(SpecCase(f"alias bomb: {where}", _t(anchors + body), "refuse"))
    return cases


def _duplicate_cases() -> list[SpecCase]:
    dup = [
        ("name twice", "name: atk\nname: btk\ngrid: {workload: [mlp]}\n"),
        ("grid twice", "name: atk\ngrid: {workload: [nope]}\ngrid: {workload: [mlp]}\n"),
        ("fixed twice", "name: atk\nfixed: {iterations: 2}\nfixed: {warmup: 0}\ngrid: {workload: [mlp]}\n"),
        ("key twice in fixed", "name: atk\nfixed: {iterations: 2, iterations: 3}\ngrid: {workload: [mlp]}\n"),
        ("key twice in grid", "name: atk\ngrid: {workload: [mlp], batch_size: [2], batch_size: [4]}\n"),
        ("key twice in block grid", "name: atk\ngrid:\n  workload: [mlp]\n  lr: [0.1]\n  lr: [0.2]\n"),
        ("key twice in exclude entry", "name: atk\ngrid: {workload: [mlp], batch_size: [2, 4]}\nexclude: [{batch_size: 2, batch_size: 4}]\n"),
        ("quoted and plain key", "name: atk\n'name': btk\ngrid: {workload: [mlp]}\n"),
        ("repeats twice", "name: atk\ngrid: {workload: [mlp]}\nrepeats: 1\nrepeats: 5\n"),
    ]
    return [SpecCase(f"duplicate key: {n}", _t(t), "refuse") for n, t in dup]


def _odd_type_cases() -> list[SpecCase]:
    g = "{workload: [mlp]}"
    refuse = [
        ("date name", _t(f"name: 2024-01-01\ngrid: {g}\n")),
        ("date seed", _spec(fixed="{seed: 2024-01-01}", grid=g)),
        ("datetime in grid", _spec(grid="{workload: [mlp], seed: [2024-01-01 10:00:00]}")),
        ("date description", _t(f"name: atk\ndescription: 2024-01-01\ngrid: {g}\n")),
        ("binary batch_size", _spec(fixed="{batch_size: !!binary aGVsbG8=}", grid=g)),
        ("set grid value", _spec(grid="{workload: [mlp], lr: !!set {0.1, 0.2}}")),
        ("set grid", _t("name: atk\ngrid: !!set {workload}\n")),
        ("omap fixed", _t(f"name: atk\nfixed: !!omap [{{iterations: 2}}]\ngrid: {g}\n")),
        ("pairs grid value", _spec(grid="{workload: !!pairs [[mlp, gpt]]}")),
        ("yes as batch size", _spec(grid="{workload: [mlp], batch_size: [yes]}")),
        ("no as precision", _spec(grid="{workload: [mlp], precision: [no]}")),
        ("on as optimizer", _spec(grid="{workload: [mlp], optimizer: [on]}")),
        ("null workload", _spec(grid="{workload: [null]}")),
        ("tilde workload", _spec(grid="{workload: [~]}")),
        ("integer key in grid", _spec(grid="{workload: [mlp], 1: [2]}")),
        ("null key in grid", _spec(grid="{workload: [mlp], null: [2]}")),
        ("bool key in grid", _spec(grid="{workload: [mlp], true: [2]}")),
        ("date key in fixed", _spec(fixed="{2024-01-01: 1}", grid=g)),
        ("integer top-level key", _t(f"name: atk\ngrid: {g}\n1: x\n")),
        ("null top-level key", _t(f"name: atk\ngrid: {g}\n~: x\n")),
        ("float key in grid", _spec(grid="{workload: [mlp], 1.5: [2]}")),
        ("int and float lr equal", _spec(grid="{workload: [mlp], lr: [1, 1.0]}")),
        ("float and string lr equal", _spec(grid="{workload: [mlp], lr: [0.001, '1e-3']}")),
        ("zero and minus zero lr", _spec(grid="{workload: [mlp], lr: [0, -0.0]}")),
        ("two spellings of 1e-3", _spec(grid="{workload: [mlp], lr: [1e-3, 0.001]}")),
        ("1e-1 and 0.1", _spec(grid="{workload: [mlp], lr: [0.1, 1e-1]}")),
        ("string lr spellings", _spec(grid="{workload: [mlp], lr: ['1e-3', '0.001']}")),
        ("seed 0 and octal 00", _spec(grid="{workload: [mlp], seed: [0, 00]}")),
        ("hex and decimal batch", _spec(grid="{workload: [mlp], batch_size: [2, 0x2]}")),
        ("quoted and plain precision", _spec(grid="{workload: [mlp], precision: [fp32, 'fp32']}")),
        ("true and yes", _spec(grid="{workload: [mlp], count_flops: [true, yes]}")),
        ("lr 0.5 twice", _spec(grid="{workload: [mlp], lr: [.5, 0.5e0]}")),
        ("batch 2 and 2.0", _spec(grid="{workload: [mlp], batch_size: [2, 2.0]}")),
        ("exclude float vs grid int", _spec(grid="{workload: [mlp], batch_size: [2]}", extra="exclude: [{batch_size: 2.0}]\n")),
        ("exclude string lr removes all", _spec(grid="{workload: [mlp], lr: [0.001]}", extra="exclude: [{lr: '1e-3'}]\n")),
    ]
    accept = [
        ("string lr 1e-3", _spec(grid="{workload: [mlp], lr: ['1e-3']}")),
        ("float tag", _spec(fixed="{iterations: 2, lr: !!float '0.01'}", grid=g)),
        ("int tag", _spec(fixed="{iterations: !!int '2'}", grid=g)),
        ("sexagesimal seed", _spec(fixed="{seed: 190:20:30}", grid=g)),
    ]
    return ([SpecCase(f"odd type: {n}", t, "refuse") for n, t in refuse]
            + [SpecCase(f"odd type: {n}", t, "accept") for n, t in accept])


def _name_cases() -> list[SpecCase]:
    g = "{workload: [mlp]}"
    refuse = [
        ("missing", f"grid: {g}\n"),
        ("empty", f"name: ''\ngrid: {g}\n"),
        ("null", f"name:\ngrid: {g}\n"),
        ("slash", f"name: a/b\ngrid: {g}\n"),
        ("dot dot", f"name: ..\ngrid: {g}\n"),
        ("parent path", f"name: ../../etc\ngrid: {g}\n"),
        ("space", f"name: a b\ngrid: {g}\n"),
        ("dot", f"name: a.b\ngrid: {g}\n"),
        ("equals (hive)", f"name: sweep_id=x\ngrid: {g}\n"),
        ("unicode letter", f"name: caf\u00e9\ngrid: {g}\n"),
        ("trailing newline", f'name: "atk\\n"\ngrid: {g}\n'),
        ("block literal (trailing newline)", f"name: |\n  atk\ngrid: {g}\n"),
        ("carriage return", f'name: "atk\\r"\ngrid: {g}\n'),
        ("tab", f'name: "a\\tb"\ngrid: {g}\n'),
        ("NUL", f'name: "atk\\0"\ngrid: {g}\n'),
        ("240 characters", f"name: {'a' * 240}\ngrid: {g}\n"),
        ("5000 characters", f"name: {'a' * 5000}\ngrid: {g}\n"),
        ("integer", f"name: 123\ngrid: {g}\n"),
        ("bool", f"name: true\ngrid: {g}\n"),
        ("list", f"name: [atk]\ngrid: {g}\n"),
        ("mapping", f"name: {{a: 1}}\ngrid: {g}\n"),
        ("float", f"name: 1.5\ngrid: {g}\n"),
        ("asterisk", f"name: 'a*'\ngrid: {g}\n"),
        ("bracket", f"name: 'a[1]'\ngrid: {g}\n"),
        ("quote", f"name: \"a'b\"\ngrid: {g}\n"),
    ]
    accept = [
        ("digits as string", f"name: '123'\ngrid: {g}\n"),
        ("hyphens and underscores", f"name: a-b_c\ngrid: {g}\n"),
    ]
    either = [("200 characters", f"name: {'a' * 200}\ngrid: {g}\n"), ("single dash", f"name: '-'\ngrid: {g}\n"), ("option-like", f"name: --help\ngrid: {g}\n")]
    return ([SpecCase(f"name: {n}", _t(t), "refuse") for n, t in refuse]
            + [SpecCase(f"name: {n}", _t(t), "accept") for n, t in accept]
            + [SpecCase(f"name: {n}", _t(t), "either") for n, t in either])


def _structure_cases() -> list[SpecCase]:
    g = "{workload: [mlp], batch_size: [2, 4]}"
    refuse = [
        ("fixed is a list", _spec(fixed="[iterations]")),
        ("fixed is a number", _spec(fixed="5")),
        ("fixed is a string", _spec(fixed="iterations")),
        ("grid null", _t("name: atk\ngrid:\n")),
        ("grid missing", _t("name: atk\nfixed: {workload: mlp}\n")),
        ("grid list", _t("name: atk\ngrid: [workload, mlp]\n")),
        ("grid empty mapping", _t("name: atk\ngrid: {}\n")),
        ("grid number", _t("name: atk\ngrid: 5\n")),
        ("grid scalar value", _spec(grid="{workload: mlp}")),
        ("grid empty list", _spec(grid="{workload: []}")),
        ("grid nested list", _spec(grid="{workload: [[mlp]]}")),
        ("grid mapping item", _spec(grid="{workload: [{a: 1}]}")),
        ("grid second key empty", _spec(grid="{workload: [mlp], batch_size: []}")),
        ("grid value mapping", _spec(grid="{workload: {mlp: 1}}")),
        ("key in fixed and grid", _spec(fixed="{batch_size: 2}", grid="{workload: [mlp], batch_size: [4]}")),
        ("no workload", _spec(fixed="{iterations: 2}", grid="{batch_size: [2]}")),
        ("description number", _spec(extra="description: 5\n")),
        ("description list", _spec(extra="description: [a]\n")),
        ("description mapping", _spec(extra="description: {a: 1}\n")),
        ("isolation thread", _spec(extra="isolation: thread\n")),
        ("isolation empty", _spec(extra="isolation: ''\n")),
        ("isolation upper case", _spec(extra="isolation: PROCESS\n")),
        ("isolation null", _spec(extra="isolation:\n")),
        ("isolation list", _spec(extra="isolation: [process]\n")),
        ("repeats 0", _spec(extra="repeats: 0\n")),
        ("repeats -1", _spec(extra="repeats: -1\n")),
        ("repeats 1.5", _spec(extra="repeats: 1.5\n")),
        ("repeats true", _spec(extra="repeats: true\n")),
        ("repeats string", _spec(extra="repeats: '2'\n")),
        ("repeats null", _spec(extra="repeats:\n")),
        ("repeats 2**63", _spec(extra=f"repeats: {2**63}\n")),
        ("gpus empty list", _spec(extra="gpus: []\n")),
        ("gpus empty string", _spec(extra="gpus: ''\n")),
        ("gpus duplicate", _spec(extra="gpus: [A100, A100]\n")),
        ("gpus empty name", _spec(extra="gpus: ['']\n")),
        ("gpus slash", _spec(extra="gpus: [a/b]\n")),
        ("gpus space", _spec(extra="gpus: ['H100 SXM']\n")),
        ("gpus number", _spec(extra="gpus: 5\n")),
        ("gpus mapping", _spec(extra="gpus: {A100: 1}\n")),
        ("gpus null item", _spec(extra="gpus: [null]\n")),
        ("gpus true", _spec(extra="gpus: true\n")),
        ("gpus newline", _spec(extra='gpus: ["A100\\n"]\n')),
        ("gpus 300 chars", _spec(extra=f"gpus: [{'A' * 300}]\n")),
        ("unknown top-level key", _spec(extra="runs: 3\n")),
        ("capitalised key", _spec(extra="Repeats: 3\n")),
        ("exclude number", _spec(grid=g, extra="exclude: 5\n")),
        ("exclude list of numbers", _spec(grid=g, extra="exclude: [5]\n")),
        ("exclude empty entry", _spec(grid=g, extra="exclude: [{}]\n")),
        ("exclude unknown key", _spec(grid=g, extra="exclude: [{nope: 1}]\n")),
        ("exclude list value", _spec(grid=g, extra="exclude: [{workload: [mlp]}]\n")),
        ("exclude removes all", _spec(grid=g, extra="exclude: [{workload: mlp}]\n")),
        ("exclude is a mapping", _spec(grid=g, extra="exclude: {workload: mlp}\n")),
        ("exclude null value", _spec(grid=g, extra="exclude: [{batch_size: null}]\n")),
    ]
    accept = [
        ("fixed null", _spec(fixed="")),
        ("exclude null", _spec(grid=g, extra="exclude:\n")),
        ("exclude empty", _spec(grid=g, extra="exclude: []\n")),
        ("exclude one point", _spec(grid=g, extra="exclude: [{batch_size: 2}]\n")),
        ("isolation reuse", _spec(extra="isolation: reuse\n")),
        ("repeats 3", _spec(extra="repeats: 3\n")),
        ("gpus each", _spec(extra="gpus: each\n")),
        ("gpus any", _spec(extra="gpus: any\n")),
        ("gpus one string", _spec(extra="gpus: A100\n")),
        ("gpus two types", _spec(extra="gpus: [A100, H100-SXM-80GB]\n")),
        ("every precision", _spec(grid="{workload: [mlp], precision: [fp32, tf32, bf16, fp16, amp_bf16, amp_fp16]}")),
        ("every optimizer", _spec(grid="{workload: [mlp], optimizer: [sgd, adam, adamw]}")),
        ("every builtin", _spec(grid="{workload: [mlp, resnet, gpt]}")),
        ("device cpu", _spec(fixed="{device: cpu}", grid="{workload: [mlp]}")),
        ("count_flops false", _spec(fixed="{count_flops: false}", grid="{workload: [mlp]}")),
    ]
    either = [
        ("gpus [any]", _spec(extra="gpus: [any]\n")),
        ("gpus [each]", _spec(extra="gpus: [each]\n")),
        ("description with NUL", _spec(extra='description: "a\\0b"\n')),
        ("description null", _spec(extra="description:\n")),
        ("exclude matching nothing", _spec(grid=g, extra="exclude: [{batch_size: 99}]\n")),
        ("1 MB description", _spec(extra=f"description: {'d' * 1_000_000}\n")),
        ("1 MB comment", b"# " + b"x" * 1_000_000 + b"\n" + VALID),
    ]
    return ([SpecCase(f"structure: {n}", t, "refuse") for n, t in refuse]
            + [SpecCase(f"structure: {n}", t, "accept") for n, t in accept]
            + [SpecCase(f"structure: {n}", t, "either") for n, t in either])


def _huge_cases() -> list[SpecCase]:
    ten = "[" + ", ".join(str(i) for i in range(1, 11)) + "]"
    many = lambda n: "[" + ", ".join(str(i) for i in range(1, n + 1)) + "]"  # noqa: E731
    custom = {"mywork.py": MODULE}
    twenty = "{workload: ['mywork:build'], " + ", ".join(f"k{i}: {ten}" for i in range(20)) + "}"
    refuse = [
        ("10^6 points (6 keys x 10)", _spec(grid="{workload: [mlp], depth: " + ten + ", width: " + ten + ", input_dim: " + ten
                                             + ", num_classes: " + many(11)[3:] + ", batch_size: " + ten + ", lr: " + ten + "}"), {}),
        ("10^20 points (custom, 20 keys x 10)", _spec(grid=twenty), custom),
        ("one key of 200k values", _spec(grid="{workload: [mlp], batch_size: " + many(200_000) + "}"), {}),
        ("1000 x 1000", _spec(grid="{workload: [mlp], batch_size: " + many(1000) + ", depth: " + many(1000) + "}"), {}),
        ("50k lr values x repeats 10", _spec(grid="{workload: [mlp], batch_size: " + many(50_000) + "}", extra="repeats: 10\n"), {}),
        ("repeats 10^9", _spec(extra="repeats: 1000000000\n"), {}),
        ("repeats 10^6", _spec(extra="repeats: 1000000\n"), {}),
        ("repeats 2**31", _spec(extra=f"repeats: {2**31}\n"), {}),
        ("exclude 200k entries", _spec(extra="exclude:\n" + "".join(f"  - {{batch_size: {i}}}\n" for i in range(100, 200_100))), {}),
        ("1M-value list", _spec(grid="{workload: [mlp], batch_size: " + many(1_000_000) + "}"), {}),
        ("gpus 200k types x 2", _spec(extra="gpus: [" + ", ".join(f"G{i}" for i in range(200_000)) + "]\n"), {}),
        # Small files, huge plans: aliases repeat a list or an entry without repeating its text.
        ("1000 x 1000 through an alias", _spec(grid="{workload: [mlp], batch_size: &v " + many(1000) + ", depth: *v}"), {}),
        ("1000^3 through aliases", _spec(grid="{workload: [mlp], batch_size: &v " + many(1000) + ", depth: *v, width: *v}"), {}),
        ("30k aliased exclude entries", _t("name: atk\nfixed: {iterations: 2}\ngrid: {workload: [mlp], batch_size: [2, 4]}\n"
                                          "exclude: [&e {batch_size: 99}" + ", *e" * 30_000 + "]\n"), {}),
        ("10k aliased gpus", _spec(extra="gpus: [&g G1" + ", *g" * 10_000 + "]\n"), {}),
    ]
    either = [
        ("10k points, 1000 exclude entries", _spec(grid="{workload: [mlp], batch_size: " + many(100) + ", depth: " + many(100) + "}",
                                                   extra="exclude:\n" + "".join(f"  - {{batch_size: {i}, depth: 1000}}\n" for i in range(1000))), {}),
        ("gpus 1000 types", _spec(extra="gpus: [" + ", ".join(f"G{i}" for i in range(1000)) + "]\n"), {}),
        ("20k points", _spec(grid="{workload: [mlp], batch_size: " + many(200) + ", depth: " + many(100) + "}"), {}),
    ]
    return ([SpecCase(f"huge: {n}", t, "refuse", files=f) for n, t, f in refuse]
            + [SpecCase(f"huge: {n}", t, "either", files=f) for n, t, f in either])


# (YAML snippet, expectation) per common parameter. 2**31 and 2**63 do not fit the int32 and
# int64 columns these parameters are stored in.
COMMON_VALUES: dict[str, list[tuple[str, str]]] = {
    "batch_size": [("0", "refuse"), ("-1", "refuse"), ("1.5", "refuse"), ("'16'", "refuse"), ("true", "refuse"),
                   ("null", "refuse"), (str(2**63), "refuse"), (str(2**64), "refuse"), (str(10**30), "refuse"),
                   ("{a: 1}", "refuse"), ("''", "refuse"), ("1e3", "refuse"), (str(2**31), "either")],
    "iterations": [("0", "refuse"), ("-1", "refuse"), (str(2**31), "refuse"), (str(2**63), "refuse"),
                   ("1.0", "refuse"), ("'10'", "refuse"), ("true", "refuse"), (str(2**31 - 1), "either")],
    "warmup": [("-1", "refuse"), (str(2**31), "refuse"), (str(2**63), "refuse"), ("0.5", "refuse"), ("x", "refuse")],
    "seed": [("-1", "refuse"), (str(2**63), "refuse"), (str(2**64), "refuse"), (str(10**40), "refuse"),
             ("1.5", "refuse"), ("'0'", "refuse"), ("true", "refuse"), (str(2**63 - 1), "accept")],
    "num_threads": [("-1", "refuse"), ("1000000", "refuse"), (str(2**31), "refuse"), (str(2**63), "refuse"),
                    ("1.0", "refuse"), ("2", "accept")],
    "lr": [(".nan", "refuse"), (".inf", "refuse"), ("-.inf", "refuse"), ("-0.001", "refuse"), ("abc", "refuse"),
           ("true", "refuse"), ("1e400", "refuse"), ("''", "refuse"), ("'nan'", "refuse"), ("'inf'", "refuse"),
           ("1.0e+400", "refuse"), ("'1e-3'", "accept"), ("0", "accept")],
    "precision": [("FP32", "refuse"), ("fp64", "refuse"), ("''", "refuse"), ("32", "refuse"), ("true", "refuse"),
                  ("'fp32 '", "refuse"), ("amp", "refuse")],
    "optimizer": [("SGD", "refuse"), ("lbfgs", "refuse"), ("''", "refuse"), ("1", "refuse"), ('"adam\\n"', "refuse")],
    "device": [("'cuda:0'", "refuse"), ("tpu", "refuse"), ("''", "refuse"), ("CPU", "refuse"), ('"auto\\n"', "refuse"),
               ("0", "refuse")],
    "count_flops": [("'true'", "refuse"), ("1", "refuse"), ("0", "refuse"), ("'yes'", "refuse"), ("null", "refuse")],
    "workload": [("''", "refuse"), ("nope", "refuse"), ("MLP", "refuse"), ("'mlp '", "refuse"), ("':build'", "refuse"),
                 ("'mod:'", "refuse"), ("'a:b:c'", "refuse"), ("'../x:build'", "refuse"), ("'nosuchmod:build'", "refuse"),
                 ("'" + "x" * 10000 + "'", "refuse"), ('"mlp\\0"', "refuse"), ("123", "refuse"), ("true", "refuse"),
                 ("'mywork:build'", "refuse"), ("'os.path:join'", "either"), ("'sys:exit'", "either"),
                 ("'json:loads'", "either"), ('"\\0:build"', "refuse"), ("'mod-x:build'", "refuse")],
}


def _param_cases() -> list[SpecCase]:
    cases = []
    for key, values in COMMON_VALUES.items():
        for i, (snippet, expect) in enumerate(values):
            short = snippet if len(snippet) <= 24 else snippet[:21] + "..."
            for where in ("grid", "fixed") if i % 2 == 0 else ("grid",):  # every value in grid, half in fixed
                fixed = {"iterations": "2", "warmup": "0"}
                grid = {"workload": "[mlp]", "batch_size": "[2]"}
                fixed.pop(key, None)
                grid.pop(key, None)
                if where == "fixed":
                    fixed[key] = snippet
                else:
                    grid[key] = f"[{snippet}]"
                if "workload" not in grid and "workload" not in fixed:
                    grid["workload"] = "[mlp]"
                text = "name: atk\nfixed:\n" + "".join(f"  {k}: {v}\n" for k, v in fixed.items())
                text += "grid:\n" + "".join(f"  {k}: {v}\n" for k, v in grid.items())
                cases.append(SpecCase(f"param {where}.{key}: {short}", _t(text), expect))
    return cases


#: The built-in workloads' own parameters and their types (docs/specs.md, "Built-in workloads"). Kept
#: here rather than asked of `stepscope workloads`, so the cases do not depend on the tree's state.
BUILTIN_PARAMS = [("mlp", "depth", "int"), ("mlp", "width", "int"), ("mlp", "input_dim", "int"),
                  ("mlp", "num_classes", "int"), ("resnet", "depth", "int"), ("resnet", "image_size", "int"),
                  ("resnet", "num_classes", "int"), ("gpt", "n_layer", "int"), ("gpt", "n_head", "int"),
                  ("gpt", "d_model", "int"), ("gpt", "seq_len", "int"), ("gpt", "vocab_size", "int")]


def _builtin_cases() -> list[SpecCase]:
    """Bad values for each built-in's own parameters."""
    cases = []
    for w, key, kind in BUILTIN_PARAMS:
        if kind == "int":
            values = [("-1", "refuse"), (str(2**63), "refuse"), ("'8'", "refuse")]
        elif kind == "float":
            values = [(".nan", "refuse"), ("x", "refuse"), ("true", "refuse")]
        else:
            values = [("nope", "refuse"), ("1", "refuse")]
        for snippet, expect in values:
            text = f"name: atk\nfixed: {{iterations: 2, warmup: 0}}\ngrid: {{workload: [{w}], {key}: [{snippet}]}}\n"
            cases.append(SpecCase(f"builtin {w}.{key}: {snippet}", _t(text), expect))
    cases.append(SpecCase("builtin gpt: d_model not a multiple of n_head", _spec(grid="{workload: [gpt], n_head: [3], d_model: [128]}"), "refuse"))
    cases.append(SpecCase("builtin resnet: depth 19", _spec(grid="{workload: [resnet], depth: [19]}"), "refuse"))
    cases.append(SpecCase("builtin mlp param on gpt", _spec(grid="{workload: [gpt], width: [8]}"), "refuse"))
    cases.append(SpecCase("builtin typo depht", _spec(grid="{workload: [mlp], depht: [2]}"), "refuse"))
    return cases


def _custom_cases() -> list[SpecCase]:
    m = {"mywork.py": MODULE}
    w = "workload: ['mywork:build']"
    return [
        SpecCase("custom: module beside the spec", _spec(grid=f"{{{w}}}"), "accept", files=m),
        SpecCase("custom: extra string param", _spec(grid=f"{{{w}, tag: [a, b]}}"), "accept", files=m),
        SpecCase("custom: 100k-char param", _spec(grid=f"{{{w}, tag: [{'x' * 100_000}]}}"), "accept", files=m),
        SpecCase("custom: null param", _spec(grid=f"{{{w}, tag: [null]}}"), "refuse", files=m),
        SpecCase("custom: nested list param", _spec(grid=f"{{{w}, tag: [[1]]}}"), "refuse", files=m),
        SpecCase("custom: mapping param", _spec(grid=f"{{{w}, tag: [{{a: 1}}]}}"), "refuse", files=m),
        SpecCase("custom: NaN param (not JSON)", _spec(grid=f"{{{w}, tag: [.nan]}}"), "refuse", files=m),
        SpecCase("custom: inf param (not JSON)", _spec(grid=f"{{{w}, tag: [.inf]}}"), "refuse", files=m),
        SpecCase("custom: 2**70 param", _spec(grid=f"{{{w}, tag: [{2**70}]}}"), "either", files=m),
        SpecCase("custom: 1 and 1.0 param", _spec(grid=f"{{{w}, tag: [1, 1.0]}}"), "either", files=m),
        SpecCase("custom: module missing", _spec(grid=f"{{{w}}}"), "refuse"),
        SpecCase("custom: submodule missing", _spec(grid="{workload: ['mywork.sub:build']}"), "refuse", files=m),
        SpecCase("custom: namespace package dir", _spec(grid="{workload: ['nsp.mod:build']}"), "either",
                 files={"nsp/mod.py": MODULE}),
        SpecCase("custom: module is a directory named .py", _spec(grid=f"{{{w}}}"), "either", files={"mywork.py/x": ""}),
        SpecCase("custom: stepscope:Workload", _spec(grid="{workload: ['stepscope:Workload']}"), "either"),
    ]


def _env_cases() -> list[SpecCase]:
    """The spec limits' environment variables set to nonsense: a clean error, not a crash."""
    out = []
    for var in ("STEPSCOPE_MAX_SPEC_BYTES", "STEPSCOPE_MAX_TRIALS", "STEPSCOPE_MAX_SPEC_NODES", "STEPSCOPE_MAX_EXCLUDE"):
        for value, expect in (("abc", "either"), ("-1", "either"), ("0", "either"), ("1e999", "either"),
                              (str(2**70), "either")):
            out.append(SpecCase(f"env: {var}={value}", VALID, expect, env={var: value}))
    return out


def _file_cases() -> list[SpecCase]:
    return [SpecCase(f"file: {k}", None, e, kind=k) for k, e in [
        ("missing", "refuse"), ("dir", "refuse"), ("fifo", "refuse"), ("devzero", "refuse"), ("devnull", "refuse"),
        ("devurandom", "refuse"), ("loop", "refuse"), ("longpath", "refuse"), ("dash", "refuse"), ("empty path", "refuse"),
        ("dangling symlink", "refuse"), ("spaces and unicode in path", "accept"),
    ]]


_TOKENS = [".nan", str(2**63), "~", "[]", "{}", "*a", "&a", "!!binary", "2024-01-01", "yes", "'", '"', "? ", "<<:",
           "- ", "|", ">", "%", "@", "`", "\\t", "0x", "1e400", "-.inf", "mlp", ":", "#", ",", "\t", "  "]


def _fuzz_cases(rng: random.Random, n: int) -> list[SpecCase]:
    base = VALID.decode() + "exclude: [{batch_size: 4}]\nrepeats: 1\ngpus: any\n"
    out = []
    for i in range(n):
        text = base
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["del", "ins", "token", "dupline", "swap", "cut"])
            pos = rng.randrange(len(text) or 1)
            lines = text.split("\n")
            if op == "del" and text:
                text = text[:pos] + text[pos + 1:]
            elif op == "ins":
                text = text[:pos] + rng.choice("abc:-[]{}#&*!|>'\"%@ \n\t0123456789,.?~") + text[pos:]
            elif op == "token":
                text = text[:pos] + rng.choice(_TOKENS) + text[pos:]
            elif op == "dupline":
                j = rng.randrange(len(lines))
                lines.insert(j, lines[j])
                text = "\n".join(lines)
            elif op == "swap":
                a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[a], lines[b] = lines[b], lines[a]
                text = "\n".join(lines)
            else:
                text = text[:pos]
        out.append(SpecCase(f"fuzz #{i:03d}", _t(text), "either"))
    return out


def build_cases(seed: int) -> list[SpecCase]:
    rng = random.Random(seed)
    cases = (_yaml_cases(rng) + _duplicate_cases() + _odd_type_cases() + _name_cases() + _structure_cases()
             + _huge_cases() + _param_cases() + _builtin_cases() + _custom_cases() + _file_cases() + _env_cases())
    return cases + _fuzz_cases(rng, N_FUZZ)


def _prepare(ctx: Context, case: SpecCase):
    """Write the case's files; return (directory, the SPEC argument)."""
    d = ctx.scratch("spec")
    for rel, content in case.files.items():
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    spec = d / "spec.yaml"
    k = case.kind
    if k == "file":
        spec.write_bytes(case.text or b"")
    elif k == "dir":
        spec.mkdir()
    elif k == "fifo":
        os.mkfifo(spec)
    elif k == "devzero":
        spec.symlink_to("/dev/zero")
    elif k == "devnull":
        spec.symlink_to("/dev/null")
    elif k == "devurandom":
        spec.symlink_to("/dev/urandom")
    elif k == "loop":
        (d / "loop2.yaml").symlink_to(d / "spec.yaml")
        spec.symlink_to(d / "loop2.yaml")
    elif k == "dangling symlink":
        spec.symlink_to(d / "nowhere.yaml")
    elif k == "longpath":
        return d, "x/" * 3000 + "spec.yaml"
    elif k == "dash":
        return d, "-"
    elif k == "empty path":
        return d, ""
    elif k == "spaces and unicode in path":
        sub = d / "my specs \u00e9\u6e2c"
        sub.mkdir()
        (sub / "sp ec.yaml").write_bytes(VALID)
        return d, str(sub / "sp ec.yaml")
    return d, "spec.yaml"


def classify(case: SpecCase, proc: Proc) -> str:
    base = proc.base_class()
    if base:
        return base
    if proc.clean_refusal:
        return "wrongly refused" if case.expect == "accept" else "clean exit 2"
    if proc.rc == 0:
        return "wrongly accepted" if case.expect == "refuse" else "accepted (valid)"
    return "other"


def run(ctx: Context) -> list[Result]:
    cases = build_cases(ctx.seed)

    def one(case: SpecCase) -> Result:
        d, arg = _prepare(ctx, case)
        proc = ctx.cli.run(["plan", arg], d, ctx.timeout, ctx.mem_limit, keep_stdout=False, env=case.env)
        outcome = classify(case, proc)
        detail = proc.first_err() if proc.rc != 0 or outcome != "accepted (valid)" else ""
        if outcome == "wrongly accepted":
            detail = f"exit 0 (expected a refusal); {detail}" if proc.stderr.strip() else "exit 0 (expected a refusal)"
        elif outcome in ("hang", "killed for memory"):
            detail = f"{proc.seconds:.1f}s, peak RSS {proc.maxrss_mb:.0f} MB; {proc.first_err()}"
        return Result("specs", case.name, outcome, detail, proc.seconds, {"rc": proc.rc, "rss_mb": round(proc.maxrss_mb)})

    return pmap(ctx, one, cases, lambda c: Result("specs", c.name, "skipped", "time budget spent"))
