"""SweepSpec: load and validate a sweep spec (YAML). Pure: imports neither torch nor Ray.

Every problem becomes a `SpecError` that names the file, the key and the fix,
so the CLI can print it as one line.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from stepscope.errors import StepscopeError
from stepscope.workloads.params import ParamError
from stepscope.workloads.registry import resolve_params

Scalar = int | float | str | bool

TOP_LEVEL_KEYS = ("name", "description", "fixed", "grid", "exclude", "gpus", "repeats", "isolation")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_GPU_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


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
    """A sweep spec is invalid. str() is the one line the user sees."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


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


def load_spec(path: str) -> SweepSpec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SpecError(path, "", "no such file; give the path of a sweep spec (YAML)") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(path, "", f"cannot read it as text ({exc.__class__.__name__})") from None
    return dataclasses.replace(parse_spec(text, source=path), abs_path=os.path.abspath(path))


def parse_spec(text: str, source: str = "<string>") -> SweepSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SpecError(source, "", f"invalid YAML at {where}: {problem}") from None
    if not isinstance(doc, dict):
        raise SpecError(source, "", "the spec must be a YAML mapping with at least name and grid")
    return _Validator(source, text).build(doc)


class _Validator:
    def __init__(self, source: str, text: str) -> None:
        self.source, self.text = source, text

    def fail(self, key: str, message: str) -> SpecError:
        return SpecError(self.source, key, message)

    def build(self, doc: dict[str, Any]) -> SweepSpec:
        for key in doc:
            if key not in TOP_LEVEL_KEYS:
                hint = "; parameters go under fixed or grid" if isinstance(key, str) else ""
                raise self.fail(str(key), f"unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}{hint}")
        name = self.name(doc.get("name"))
        fixed = self.fixed(doc.get("fixed", {}))
        grid = self.grid(doc.get("grid"))
        both = sorted(set(fixed) & {k for k, _ in grid})
        if both:
            raise self.fail(f"grid.{both[0]}", "also set in fixed; keep it in one place")
        exclude = self.exclude(doc.get("exclude", []), {k for k, _ in grid} | set(fixed))
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
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise self.fail("name", f"{value!r} is not a valid name; use letters, digits, - and _")
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
        return {str(k): v for k, v in value.items()}

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
                raise self.fail(field, f"expected a list of values, got {values!r}; write [{_yaml_scalar(values)}]")
            if not values:
                raise self.fail(field, "empty list; give at least one value")
            for v in values:
                self.scalar(field, v)
            if len({json.dumps(v) for v in values}) != len(values):
                raise self.fail(field, "has a repeated value; use `repeats` to repeat trials")
            out.append((str(key), tuple(values)))
        return tuple(out)

    def exclude(self, value: Any, known: set[str]) -> tuple[tuple[tuple[str, Scalar], ...], ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail("exclude", "expected a list of mappings, e.g. [{workload: gpt, batch_size: 64}]")
        out = []
        for i, entry in enumerate(value):
            field = f"exclude[{i}]"
            if not isinstance(entry, dict) or not entry:
                raise self.fail(field, "expected a non-empty mapping of parameter: value")
            for key, v in entry.items():
                if key not in known:
                    raise self.fail(f"{field}.{key}", "not a parameter of this spec's grid or fixed")
                self.scalar(f"{field}.{key}", v)
            out.append(tuple((str(k), v) for k, v in entry.items()))
        return tuple(out)

    def gpus(self, value: Any) -> GpuTargets:
        if value in (GpuMode.ANY.value, GpuMode.EACH.value):
            return GpuTargets(GpuMode(value))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("gpus", "expected `any`, `each` or a list of GPU types, e.g. [A100, H100-SXM-80GB]")
        for v in value:
            if not isinstance(v, str) or not _GPU_RE.match(v):
                raise self.fail("gpus", f"{v!r} is not an accelerator type name, e.g. H100 or A100")
        if len(set(value)) != len(value):
            raise self.fail("gpus", "lists a type twice")
        return GpuTargets(GpuMode.LISTED, tuple(value))

    def positive_int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"expected a positive integer, got {value!r}")
        return value

    def isolation(self, value: Any) -> Isolation:
        if not isinstance(value, str) or value not in ISOLATIONS:
            raise self.fail("isolation", f"{value!r}: use `process` (a fresh process per trial) or `reuse` (trials share their Ray worker)")
        return Isolation(value)

    def scalar(self, field: str, value: Any) -> None:
        if value is None or isinstance(value, (dict, list)):
            raise self.fail(field, f"expected a single value (number, string or bool), got {value!r}")
        if not isinstance(value, (int, float, str, bool)):
            raise self.fail(field, f"expected a number, string or bool, got {value!r}")

    def check_points(self, spec: SweepSpec) -> None:
        """Validate every grid point's resolved parameters; an empty plan is an error."""
        from stepscope.orchestrator.grid import grid_points  # local: grid imports this module

        points = grid_points(spec)
        if not points:
            raise self.fail("exclude", "removes every grid point; nothing would run")
        fixed_keys = {k for k, _ in spec.fixed}
        for point in points:
            try:
                resolve_params(point)
            except ParamError as exc:
                where = "fixed" if exc.key in fixed_keys else "grid"
                raise self.fail(f"{where}.{exc.key}", exc.message) from None


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
        return value
    return json.dumps(value)
