"""Built-in workloads and how a workload name becomes a builder. Torch-free.

The registry declares each built-in's parameters without importing its module
(which imports torch), so `stepscope plan` and `stepscope workloads` stay fast.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping

from stepscope.workloads import builtin
from stepscope.workloads.builtin.base import BuiltinInfo
from stepscope.workloads.params import COMMON_BY_NAME, ParamError, brief, resolve_eps


def _discover() -> dict[str, BuiltinInfo]:
    """Every folder of `stepscope.workloads.builtin`'s `INFO`, by name, in listing order.
    Imports only the folders' torch-free `__init__` modules."""
    infos = [
        importlib.import_module(f"{builtin.__name__}.{entry.name}").INFO
        for entry in pkgutil.iter_modules(builtin.__path__)
        if entry.ispkg
    ]
    return {info.name: info for info in sorted(infos, key=lambda i: (i.order, i.name))}


BUILTINS: dict[str, BuiltinInfo] = _discover()

#: stepscope's import names before 0.1 gave it one (`from workloads import Workload`).
_OLD_NAMES = frozenset({"workloads", "orchestrator", "analysis"})


def is_custom(name: str) -> bool:
    return ":" in name


def validate_workload_name(name: str) -> None:
    """Raise ParamError for a name that is neither a built-in nor `module:function`."""
    if is_custom(name):
        module, _, func = name.partition(":")
        if not module or not func or not all(p.isidentifier() for p in module.split(".")) or not func.isidentifier():
            raise ParamError("workload", f"{brief(name)} is not of the form module.path:function")
        return
    if name not in BUILTINS:
        known = ", ".join(sorted(BUILTINS))
        raise ParamError(
            "workload",
            f"unknown workload {brief(name)}; use one of {known}, or module:function for a custom one",
        )


def resolve_params(raw: Mapping[str, object]) -> dict[str, object]:
    """Validate one trial's parameters and fill in defaults.

    Built-in workloads accept the common parameters and their own; a custom
    workload accepts any extra keys (scalars), since only its code knows them.
    A parameter without a default (`eps`) is left out unless set, so that adding one
    changes no existing trial's id; `eps` is filled in for pure fp16 with Adam/AdamW.
    """
    if "workload" not in raw:
        raise ParamError("workload", "every trial needs a workload: set it in fixed or grid")
    name = COMMON_BY_NAME["workload"].validate(raw["workload"])
    validate_workload_name(name)
    declared = dict(COMMON_BY_NAME)
    if not is_custom(name):
        declared.update(BUILTINS[name].params_by_name)
    out: dict[str, object] = {}
    for key, value in raw.items():
        param = declared.get(key)
        if param is None:
            if is_custom(name):
                if not isinstance(value, (int, float, str, bool)):
                    raise ParamError(key, f"expected a scalar (number, string, bool), got {brief(value)}")
                out[key] = value
                continue
            known = sorted(set(declared) - {"workload"})
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParamError(key, f"unknown parameter for workload {brief(name)}; {hint}known: {', '.join(known)}")
        out[key] = param.validate(value)
    for key, param in declared.items():
        if key not in out and param.default is not None:
            out[key] = param.default
    resolve_eps(out)  # a default only for pure fp16 with Adam/AdamW, where torch's 1e-8 is 0
    if not is_custom(name) and BUILTINS[name].check is not None:
        BUILTINS[name].check(out)
    return out


def _top_level_places(name: str, search_paths: Iterable[str]) -> list[str] | None:
    """The file of a custom workload's top-level module, or its package's directories
    (a namespace package may have several); [] for one built into the interpreter
    (no file); None when it is not found."""
    top = name.partition(":")[0].split(".")[0]
    with _extra_path(search_paths):
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.submodule_search_locations is not None:
            # Read now: a namespace package's path is recomputed from sys.path when iterated.
            return list(spec.submodule_search_locations)
    return [spec.origin] if spec.origin and os.path.isfile(spec.origin) else []


def locate_module(name: str, search_paths: Iterable[str] = ()) -> str | None:
    """Where a custom workload's top-level module is, without importing (running) it.

    `name` is `module.path:function`; its first dotted part is looked up on
    `search_paths` (beside the spec, then the current directory: see
    `stepscope.orchestrator.spec.search_paths`), then on sys.path, as the worker
    will import it. Returns the module's file, or a package's directory (a namespace
    package's first); None when it cannot be found, or is built into the interpreter
    (there is no file to ship). The one place that answers "where is this custom
    module": `plan`/`run` check with it, `submit` ships what it names.
    """
    places = _top_level_places(name, search_paths)
    return places[0] if places else None


def find_custom_module(name: str, search_paths: Iterable[str]) -> bool:
    """True when a custom workload's module can be found: its top-level module
    (`locate_module`), then each further dotted part as a subpackage or a module file
    in it (in any of a namespace package's directories), read from the filesystem:
    nothing is imported, so nothing runs."""
    places = _top_level_places(name, search_paths)
    if not places:
        return False
    for part in name.partition(":")[0].split(".")[1:]:
        found = []
        for where in places:
            if not os.path.isdir(where):
                continue  # a plain module has no submodules
            package = os.path.join(where, part)
            modules = [f"{package}{suffix}" for suffix in importlib.machinery.all_suffixes()]  # .py, .so, ...
            if os.path.isdir(package):
                found.append(package)
            found += [m for m in modules if os.path.isfile(m)][:1]
        if not found:
            return False
        places = found
    return True


def load_builder(name: str, search_paths: Iterable[str] = ()) -> Callable:
    """Import and return the `build(params) -> Workload` function for a workload name.

    Raises ImportError (ModuleNotFoundError) when the module or the function is not there.
    """
    if not is_custom(name):
        return importlib.import_module(BUILTINS[name].module).build
    module_name, _, func = name.partition(":")
    # Kept on sys.path for good: the module may import its neighbours lazily.
    sys.path[:0] = [p for p in search_paths if p and p not in sys.path]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name in _OLD_NAMES:  # a workload written for stepscope before it had one import name
            raise type(exc)(
                f"{exc}; stepscope's modules import as stepscope.{exc.name}: write `from stepscope import Workload`",
                name=exc.name,
            ) from exc
        raise
    try:
        return getattr(module, func)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no function {func!r}") from None


class _extra_path:
    """Put directories at the front of sys.path for the duration of an import."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = [p for p in paths if p and p not in sys.path]

    def __enter__(self) -> None:
        sys.path[:0] = self.paths

    def __exit__(self, *exc: object) -> None:
        for p in self.paths:
            try:
                sys.path.remove(p)
            except ValueError:
                pass
