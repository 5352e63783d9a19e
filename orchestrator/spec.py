"""SweepSpec: load and validate a sweep spec (YAML). Pure: imports neither torch nor Ray.

Every problem becomes a `SpecError` that names the file, the key and the fix,
so the CLI can print it as one line; a value it quotes is cut short (`brief`).

A spec is bounded, and refused quickly, before anything is expanded:

- the file: at most `STEPSCOPE_MAX_SPEC_BYTES` bytes (default 256 KiB);
- its YAML: at most `STEPSCOPE_MAX_SPEC_NODES` values once aliases are expanded
  (default 50,000), nested at most 32 deep (see `spec_yaml`);
- the trials it expands to (grid points x GPU types x repeats): at most
  `STEPSCOPE_MAX_TRIALS` (default 10,000), counted as a product first;
- `exclude`: at most `STEPSCOPE_MAX_EXCLUDE` entries (default 1,000).

Each environment variable, set to a larger number, raises its limit.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import math
import os
import re
import select
import stat
from dataclasses import dataclass
from typing import Any

import yaml

from stepscope.errors import Field, StepscopeError
from stepscope.orchestrator.spec_yaml import YamlError, count, limit
from stepscope.orchestrator.spec_yaml import load as load_yaml
from stepscope.workloads.params import ParamError, brief
from stepscope.workloads.registry import find_custom_module, is_custom, resolve_params

Scalar = int | float | str | bool

TOP_LEVEL_KEYS = ("name", "description", "fixed", "grid", "exclude", "gpus", "repeats", "isolation")
#: Names become file and partition names (`sweep_id=<name>-<time>-<hex>`): a safe alphabet,
#: bounded length. Matched with fullmatch (`$` would also match before a trailing newline).
MAX_NAME_CHARS = 64
MAX_SWEEP_ID_CHARS = 100  # a generated id is the name and 21 more characters
MAX_GPU_CHARS = 64
_NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}")
_SWEEP_ID_RE = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{MAX_SWEEP_ID_CHARS - 1}}}")
_GPU_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MAX_GPU_CHARS - 1}}}")


class _Choice(str, enum.Enum):
    """A spec keyword: compares, hashes and prints as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Isolation(_Choice):
    """`isolation:`: how trials are kept apart from each other."""

    PROCESS = "process"  # every trial in a fresh process forked for it (orchestrator.forkserver)
    REUSE = "reuse"  # trials run in their Ray worker itself: faster, shares process state


ISOLATIONS = tuple(i.value for i in Isolation)


class GpuMode(_Choice):
    """`gpus:`: which accelerator types the grid runs on."""

    ANY = "any"  # no constraint: wherever Ray places a trial
    EACH = "each"  # once on every GPU type the cluster has when the sweep starts
    LISTED = "listed"  # once on each type listed in the spec


@dataclass(frozen=True, slots=True)
class GpuTargets:
    """What `gpus:` says: a mode, and for `listed` the types (Ray's coarse types such as
    `A100`, or precise labels such as `H100-SXM-80GB`; see orchestrator.cluster)."""

    mode: GpuMode = GpuMode.ANY
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.mode is GpuMode.LISTED) != bool(self.types):
            raise ValueError(f"GpuTargets: mode {self.mode} takes {'a list of' if self.mode is GpuMode.LISTED else 'no'} types")

    @property
    def wants_gpus(self) -> bool:
        """Every trial needs a GPU (`each`, or a list of types)."""
        return self.mode is not GpuMode.ANY


class SpecError(StepscopeError, ValueError):
    """A sweep spec is invalid. str() is the one line the user sees. `source`: the spec's
    path, or the input that gave the bad value (a `Field`: `check_gpu_label`)."""

    def __init__(self, source: str | Field, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        super().__init__(source, f": {key}: {message}" if key else f": {message}")


#: A trial's GPU type and a sweep's id, as `check_gpu_label` and `check_sweep_id` name them.
GPU, SWEEP_ID = Field("gpu"), Field("sweep_id")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    name: str
    fixed: tuple[tuple[str, Scalar], ...]
    grid: tuple[tuple[str, tuple[Scalar, ...]], ...]  # in the order written
    exclude: tuple[tuple[tuple[str, Scalar], ...], ...]
    targets: GpuTargets
    repeats: int
    isolation: Isolation
    description: str
    text: str  # the YAML as written
    source: str  # the path it came from, for messages ("<string>" if none)
    abs_path: str | None = None  # resolved when loaded: a Ray job's cwd can vanish later

    @property
    def gpus(self) -> tuple[str, ...] | None:
        """The listed GPU types, or None for `any` and `each`."""
        return self.targets.types if self.targets.mode is GpuMode.LISTED else None

    @property
    def gpus_each(self) -> bool:
        return self.targets.mode is GpuMode.EACH

    @property
    def directory(self) -> str | None:
        """The spec's directory: custom workload modules beside the spec are importable."""
        return os.path.dirname(self.abs_path) if self.abs_path else None

    @property
    def spec_hash(self) -> str:
        """A hash of what the spec means (not how it is formatted)."""
        doc = {
            "name": self.name,
            "fixed": [list(kv) for kv in self.fixed],
            "grid": [[k, list(v)] for k, v in self.grid],
            "exclude": [[list(kv) for kv in e] for e in self.exclude],
            "gpus": "each" if self.gpus_each else (list(self.gpus) if self.gpus is not None else None),
            "repeats": self.repeats,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def search_paths(spec: SweepSpec, cwd: str | None = None) -> list[str]:
    """Where a custom workload module may sit: beside the spec, then the current directory."""
    paths = [spec.directory, cwd or os.getcwd()]
    return [p for p in paths if p]


def check_custom_workloads(spec: SweepSpec, trials) -> None:
    """SpecError unless every custom workload the trials name has its module on the search
    paths (found on the filesystem, never imported: `plan` imports no workload)."""
    for name in sorted({t.params["workload"] for t in trials if is_custom(t.params["workload"])}):
        if not find_custom_module(name, search_paths(spec)):
            raise SpecError(
                spec.source,
                "workload",
                f"cannot find module {name.partition(':')[0]!r} beside the spec, in the current "
                "directory or on PYTHONPATH",
            )


def check_gpu_label(label: str | None, source: str | Field = GPU) -> str | None:
    """`label` when it is a safe accelerator type name (as `gpus:` lists them), else SpecError."""
    if label is not None and not _GPU_RE.fullmatch(label):
        raise SpecError(source, "", f"{brief(label)} is not an accelerator type name, e.g. H100 or A100-SXM4-40GB "
                                    f"(at most {MAX_GPU_CHARS} letters, digits, ., :, - and _)")
    return label


def check_sweep_id(sweep_id: str | None, source: str | Field = SWEEP_ID) -> str | None:
    """A sweep id given by the user names a partition directory: the alphabet of spec names
    (and `.`), at most MAX_SWEEP_ID_CHARS characters. Generated ids (`resume.new_sweep_id`)
    pass. None passes (no id given)."""
    if sweep_id is not None and not _SWEEP_ID_RE.fullmatch(sweep_id):
        raise SpecError(source, "", f"{brief(sweep_id)} is not a sweep id; use 1 to {MAX_SWEEP_ID_CHARS} letters, "
                                    "digits, ., - and _ (not starting with .)")
    return sweep_id


#: How long a spec that is a pipe may keep us waiting for its first byte (seconds).
PIPE_WAIT_S = 10.0


def _open_spec(path: str):
    """`path` opened for reading, without hanging on a named pipe that no one writes:
    opened non-blocking, a pipe is waited on for PIPE_WAIT_S (`<(cat spec.yaml)` works;
    a FIFO with no writer reads as empty), then read as a plain file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            ready, _, _ = select.select([fd], [], [], PIPE_WAIT_S)
            if not ready:
                raise SpecError(path, "", f"a pipe that sent nothing in {PIPE_WAIT_S:.0f} s; give the path of a "
                                          "sweep spec file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_spec(path: str) -> SweepSpec:
    max_bytes = _limit(path, "STEPSCOPE_MAX_SPEC_BYTES")
    try:
        with _open_spec(path) as f:
            data = f.read(max_bytes + 1)  # bounded: the path may be a huge file, or /dev/zero
            if len(data) > max_bytes:
                size = os.fstat(f.fileno()).st_size
                shown = f"{count(size)} bytes" if size > max_bytes else f"more than {count(max_bytes)} bytes"
                raise _too_large(path, shown, max_bytes)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(path, "", "no such file; give the path of a sweep spec (YAML)") from None
    except UnicodeDecodeError as exc:
        raise SpecError(path, "", f"cannot read it as text: byte {exc.start + 1} is not UTF-8") from None
    except OSError as exc:
        raise SpecError(path, "", f"cannot read it as text ({exc.__class__.__name__}: {exc.strerror or exc})") from None
    return dataclasses.replace(parse_spec(text, source=path), abs_path=os.path.abspath(path))


def parse_spec(text: str, source: str = "<string>") -> SweepSpec:
    max_bytes = _limit(source, "STEPSCOPE_MAX_SPEC_BYTES")
    try:
        size = len(text.encode("utf-8")) if len(text) <= max_bytes else len(text)
    except UnicodeEncodeError as exc:
        raise SpecError(source, "", f"character {exc.start + 1} is not valid text (a lone surrogate)") from None
    if size > max_bytes:
        raise _too_large(source, f"{count(size)} {'bytes' if len(text) <= max_bytes else 'characters'}", max_bytes)
    try:
        doc = load_yaml(text)
    except YamlError as exc:
        raise SpecError(source, exc.key, exc.message) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, "", f"invalid YAML at {_yaml_problem(exc)}") from None
    if not isinstance(doc, dict):
        raise SpecError(source, "", "the spec must be a YAML mapping with at least name and grid")
    return _Validator(source, text).build(doc)


def _limit(source: str, name: str) -> int:
    try:
        return limit(name)
    except YamlError as exc:
        raise SpecError(source, "", exc.message) from None


def _too_large(source: str, shown: str, max_bytes: int) -> SpecError:
    return SpecError(source, "", f"{shown}, above the limit of {count(max_bytes)} bytes for a spec; write a "
                                 "smaller spec, or raise the limit with STEPSCOPE_MAX_SPEC_BYTES")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, from PyYAML's error: its problem text can quote the input, so it is cut."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else brief(exc.character)
        return f"character {exc.position + 1}: {char} is not allowed in YAML ({exc.reason})"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    problem = " ".join(str(getattr(exc, "problem", None) or "malformed YAML").split())
    return f"{where}: {problem if len(problem) <= 120 else problem[:119] + '…'}"


class _Validator:
    def __init__(self, source: str, text: str) -> None:
        self.source, self.text = source, text

    def fail(self, key: str, message: str) -> SpecError:
        return SpecError(self.source, key, message)

    def build(self, doc: dict[str, Any]) -> SweepSpec:
        for key in doc:
            if key not in TOP_LEVEL_KEYS:
                close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.fail(key, f"unknown key; {hint}allowed: {', '.join(TOP_LEVEL_KEYS)}; "
                                     "parameters go under fixed or grid")
        name = self.name(doc.get("name"))
        fixed = self.fixed(doc.get("fixed", {}))
        grid = self.grid(doc.get("grid"))
        both = sorted(set(fixed) & {k for k, _ in grid})
        if both:
            raise self.fail(f"grid.{both[0]}", "also set in fixed; keep it in one place")
        exclude = self.exclude(doc.get("exclude", []), {**{k: [v] for k, v in fixed.items()}, **dict(grid)})
        spec = SweepSpec(
            name=name,
            fixed=tuple(fixed.items()),
            grid=grid,
            exclude=exclude,
            targets=self.gpus(doc.get("gpus", "any")),
            repeats=self.positive_int("repeats", doc.get("repeats", 1)),
            isolation=self.isolation(doc.get("isolation", "process")),
            description=self.description(doc.get("description", "")),
            text=self.text,
            source=self.source,
        )
        self.check_points(spec)
        return spec

    def name(self, value: Any) -> str:
        if value is None:
            raise self.fail("name", "missing; add e.g. `name: my-sweep` (letters, digits, - and _)")
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise self.fail("name", f"{brief(value)} is not a valid name; use 1 to {MAX_NAME_CHARS} letters, digits, - and _")
        return value

    def description(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail("description", "expected a string")
        return value

    def fixed(self, value: Any) -> dict[str, Scalar]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("fixed", "expected a mapping of parameter: value")
        for key, v in value.items():
            self.scalar(f"fixed.{key}", v)
        return dict(value)

    def grid(self, value: Any) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
        if value is None:
            raise self.fail("grid", "missing; add e.g. `grid: {workload: [mlp], batch_size: [16, 64]}`")
        if not isinstance(value, dict):
            raise self.fail("grid", "expected a mapping of parameter: [values]")
        if not value:
            raise self.fail("grid", "empty; give at least one parameter with a list of values")
        out = []
        for key, values in value.items():
            field = f"grid.{key}"
            if not isinstance(values, list):
                write = f"; write [{_yaml_scalar(values)}]" if isinstance(values, (int, float, str, bool)) else ""
                raise self.fail(field, f"expected a list of values, got {brief(values)}{write}")
            if not values:
                raise self.fail(field, "empty list; give at least one value")
            seen: dict[tuple, Scalar] = {}
            for v in values:
                self.scalar(field, v)
                if value_key(v) in seen:
                    first = seen[value_key(v)]
                    same = "" if repr(first) == repr(v) else f" (equal to {brief(first)})"
                    raise self.fail(field, f"has a repeated value {brief(v)}{same}; give each value once, and use "
                                           "`repeats` to repeat trials")
                seen[value_key(v)] = v
            out.append((key, tuple(values)))
        return tuple(out)

    def exclude(self, value: Any, known: dict[str, Any]) -> tuple[tuple[tuple[str, Scalar], ...], ...]:
        """`known`: every parameter of the spec with the values it takes."""
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail("exclude", "expected a list of mappings, e.g. [{workload: gpt, batch_size: 64}]")
        most = _limit(self.source, "STEPSCOPE_MAX_EXCLUDE")
        if len(value) > most:
            raise self.fail("exclude", f"{count(len(value))} entries, above the limit of {count(most)}; exclude "
                                       "fewer points (or narrow the grid), or raise the limit with STEPSCOPE_MAX_EXCLUDE")
        takes = {k: {value_key(v) for v in values} for k, values in known.items()}
        out = []
        for i, entry in enumerate(value):
            field = f"exclude[{i}]"
            if not isinstance(entry, dict) or not entry:
                raise self.fail(field, "expected a non-empty mapping of parameter: value")
            for key, v in entry.items():
                if key not in known:
                    raise self.fail(f"{field}.{key}", "not a parameter of this spec's grid or fixed")
                self.scalar(f"{field}.{key}", v)
                if value_key(v) not in takes[key]:  # the entry could never match: a typo, or 1 for true
                    shown = ", ".join(brief(x, 30) for x in known[key][:8]) + (", ..." if len(known[key]) > 8 else "")
                    raise self.fail(f"{field}.{key}", f"{brief(v)} is not a value {key} takes in this spec ({shown}); "
                                                      "this entry would exclude nothing")
            out.append(tuple(entry.items()))
        return tuple(out)

    def gpus(self, value: Any) -> GpuTargets:
        if value in (GpuMode.ANY.value, GpuMode.EACH.value):
            return GpuTargets(GpuMode(value))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("gpus", "expected `any`, `each` or a list of GPU types, e.g. [A100, H100-SXM-80GB]")
        for v in value:
            if not isinstance(v, str) or not _GPU_RE.fullmatch(v):
                raise self.fail("gpus", f"{brief(v)} is not an accelerator type name, e.g. H100 or A100 (at most "
                                        f"{MAX_GPU_CHARS} letters, digits, ., :, - and _)")
        if len(set(value)) != len(value):
            raise self.fail("gpus", "lists a type twice")
        return GpuTargets(GpuMode.LISTED, tuple(value))

    def positive_int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"expected a positive integer, got {brief(value)}")
        return value

    def isolation(self, value: Any) -> Isolation:
        if not isinstance(value, str) or value not in ISOLATIONS:
            raise self.fail("isolation", f"{brief(value)}: use `process` (a fresh process per trial) or `reuse` (trials share their Ray worker)")
        return Isolation(value)

    def scalar(self, field: str, value: Any) -> None:
        if value is None or isinstance(value, (dict, list)):
            raise self.fail(field, f"expected a single value (number, string or bool), got {brief(value)}")
        if not isinstance(value, (int, float, str, bool)):
            raise self.fail(field, f"expected a number, string or bool, got {brief(value)}")

    def check_points(self, spec: SweepSpec) -> None:
        """Count the trials (a product, before anything is expanded), then validate every
        grid point's resolved parameters. An empty plan is an error, and so are two points
        that resolve alike (`lr: [1e-3, 0.001]`): they would be two trials with one id."""
        from stepscope.orchestrator.grid import grid_points  # local: grid imports this module

        check_size(spec)
        points = grid_points(spec)
        if not points:
            raise self.fail("exclude", "removes every grid point; nothing would run")
        check_size(spec, len(points))
        fixed_keys = {k for k, _ in spec.fixed}
        seen: dict[str, dict] = {}
        for point in points:
            try:
                resolved = resolve_params(point)
            except ParamError as exc:
                where = "fixed" if exc.key in fixed_keys else "grid"
                raise self.fail(f"{where}.{exc.key}", exc.message) from None
            first = seen.setdefault(json.dumps(resolved, sort_keys=True), point)
            if first is not point:  # points are distinct dicts: identity is position here
                key = next((k for k, _ in spec.grid if value_key(first[k]) != value_key(point[k])), spec.grid[0][0])
                raise self.fail(f"grid.{key}", f"{brief(first[key])} and {brief(point[key])} are the same value once "
                                               f"read as a parameter ({brief(resolved[key])}); give each value once")


def check_size(spec: SweepSpec, points: int | None = None, gpu_types: int | None = None) -> None:
    """Refuse a spec that expands to more than STEPSCOPE_MAX_TRIALS trials, counted before
    anything is expanded: without `points`, the grid's product and `repeats` (so that
    `grid_points` is bounded); with `points` (the grid points left after `exclude`), the
    trials: points x GPU types x repeats. `gpu_types`: for `gpus: each`, how many the
    cluster has (else 1)."""
    most = _limit(spec.source, "STEPSCOPE_MAX_TRIALS")
    how = "split the sweep, or raise the limit with STEPSCOPE_MAX_TRIALS"
    sizes = [len(values) for _, values in spec.grid]
    product = math.prod(sizes)
    if product > most:
        shown = " x ".join(f"{n:,} {k}" for n, (k, _) in zip(sizes, spec.grid, strict=True))
        raise SpecError(spec.source, "grid", f"{shown} is {count(product)} combinations, above the limit of "
                                             f"{count(most)} trials; {how}")
    if spec.repeats > most:
        raise SpecError(spec.source, "repeats", f"{count(spec.repeats)} is above the limit of {count(most)} trials; {how}")
    if points is None:
        return
    targets = len(spec.gpus) if spec.gpus is not None else (gpu_types or 1)
    total = points * targets * spec.repeats
    if total > most:
        key = "repeats" if spec.repeats > 1 else "gpus"
        raise SpecError(spec.source, key, f"{points:,} grid points x {targets:,} GPU types x {count(spec.repeats)} "
                                          f"repeats is {count(total)} trials, above the limit of {count(most)}; {how}")


def value_key(value: Scalar) -> tuple[int, Scalar]:
    """What a spec value is compared by, as a hashable key: 1 and 1.0 are one value,
    true and 1 are two (Python's True == 1 would make them one)."""
    kind = 0 if isinstance(value, bool) else 1 if isinstance(value, (int, float)) else 2
    return (kind, value)


def _yaml_scalar(value: Scalar) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,80}", value):
        return value
    text = json.dumps(value[:80] if isinstance(value, str) else value)
    return text if len(text) <= 80 else text[:79] + "…"
