"""Built-in workloads and how a workload name becomes a builder. Torch-free.

The registry declares each built-in's parameters without importing its module
(which imports torch), so `stepscope plan` and `stepscope workloads` stay fast.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from workloads.params import COMMON_BY_NAME, Param, ParamError


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    name: str
    module: str  # imported only when a trial builds it
    description: str
    params: tuple[Param, ...]

    @property
    def params_by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}


BUILTINS: dict[str, WorkloadInfo] = {
    "mlp": WorkloadInfo(
        name="mlp",
        module="workloads.builtin.mlp",
        description="multi-layer perceptron classifier on random features",
        params=(
            Param("depth", int, 4, "hidden layers", minimum=1),
            Param("width", int, 256, "units per hidden layer", minimum=1),
            Param("input_dim", int, 256, "input features", minimum=1),
            Param("num_classes", int, 10, "output classes", minimum=2),
        ),
    ),
    "resnet": WorkloadInfo(
        name="resnet",
        module="workloads.builtin.resnet",
        description="ResNet image classifier (basic blocks at 18/34, bottlenecks at 50/101)",
        params=(
            Param("depth", int, 18, "ResNet depth", choices=(18, 34, 50, 101)),
            Param("image_size", int, 32, "input height and width in pixels", minimum=8),
            Param("num_classes", int, 10, "output classes", minimum=2),
        ),
    ),
    "gpt": WorkloadInfo(
        name="gpt",
        module="workloads.builtin.gpt",
        description="decoder-only transformer language model (GPT-2 style, tied embeddings)",
        params=(
            Param("n_layer", int, 2, "transformer blocks", minimum=1),
            Param("n_head", int, 4, "attention heads", minimum=1),
            Param("d_model", int, 128, "embedding width; a multiple of n_head", minimum=1),
            Param("seq_len", int, 64, "tokens per sequence (the context length)", minimum=1),
            Param("vocab_size", int, 1024, "vocabulary size", minimum=2),
        ),
    ),
}


def is_custom(name: str) -> bool:
    return ":" in name


def validate_workload_name(name: str) -> None:
    """Raise ParamError for a name that is neither a built-in nor `module:function`."""
    if is_custom(name):
        module, _, func = name.partition(":")
        if not module or not func or not all(p.isidentifier() for p in module.split(".")) or not func.isidentifier():
            raise ParamError("workload", f"{name!r} is not of the form module.path:function")
        return
    if name not in BUILTINS:
        known = ", ".join(sorted(BUILTINS))
        raise ParamError(
            "workload",
            f"unknown workload {name!r}; use one of {known}, or module:function for a custom one",
        )


def resolve_params(raw: Mapping[str, object]) -> dict[str, object]:
    """Validate one trial's parameters and fill in defaults.

    Built-in workloads accept the common parameters and their own; a custom
    workload accepts any extra keys (scalars), since only its code knows them.
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
                    raise ParamError(key, f"expected a scalar (number, string, bool), got {value!r}")
                out[key] = value
                continue
            known = sorted(set(declared) - {"workload"})
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParamError(key, f"unknown parameter for workload {name!r}; {hint}known: {', '.join(known)}")
        out[key] = param.validate(value)
    for key, param in declared.items():
        if key not in out and param.default is not None:
            out[key] = param.default
    _check_cross_field(out)
    return out


def _check_cross_field(p: Mapping[str, object]) -> None:
    if p["workload"] == "gpt" and p["d_model"] % p["n_head"]:
        raise ParamError(
            "d_model", f"d_model {p['d_model']} must be a multiple of n_head {p['n_head']}"
        )


def find_custom_module(name: str, search_paths: Iterable[str]) -> bool:
    """True when a custom workload's top-level module can be found on
    `search_paths` + sys.path, without importing (and so without running) it."""
    top = name.partition(":")[0].split(".")[0]
    with _extra_path(search_paths):
        return importlib.util.find_spec(top) is not None


def load_builder(name: str, search_paths: Iterable[str] = ()) -> Callable:
    """Import and return the `build(params) -> Workload` function for a workload name."""
    if not is_custom(name):
        return importlib.import_module(BUILTINS[name].module).build
    module_name, _, func = name.partition(":")
    # Kept on sys.path for good: the module may import its neighbours lazily.
    sys.path[:0] = [p for p in search_paths if p and p not in sys.path]
    module = importlib.import_module(module_name)
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
