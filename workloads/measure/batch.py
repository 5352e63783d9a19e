"""A batch on its way to the model: moved to the device, and passed to the model.

One mover and one caller, used by the timed loop (`runner`) and by the untimed
FLOP-counting pass (`flops`), so that both see the same batch the same way.

What a batch may be, as a PyTorch training loop accepts it (the rules of
`torch.utils.data.default_collate` and of `model(**batch)` for mappings):

- a tensor;
- a mapping (a dict, an OrderedDict, a tokenizer's `BatchEncoding` or any other
  `collections.abc.Mapping`): the model is called `model(**batch)`;
- a tuple or list, a named tuple included: `model(*batch)`;
- a dataclass instance, or anything else: `model(batch)`;
- nested any way, e.g. a dict of tuples of tensors.

Containers are rebuilt as what they were (a named tuple stays that named tuple,
a `BatchEncoding` keeps its type and its other attributes); values that are not
tensors pass through. An object that is none of these but has its own `.to()`
(a `PackedSequence`, a user's batch class) is moved by its own method, which
knows what must stay where (a PackedSequence's `batch_sizes` stay on the CPU).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any

_Tensor: Any = None


def _tensor_type() -> Any:
    # torch is imported on first use: `stepscope plan` imports the runner's modules, never torch.
    global _Tensor
    if _Tensor is None:
        import torch

        _Tensor = torch.Tensor
    return _Tensor


def to_device(x: Any, device: Any, cast: Any = None) -> Any:
    """`x` with every tensor in it on `device`, containers rebuilt as they were.

    With `cast` (a torch dtype: bf16/fp16 runs, where the model itself was cast),
    floating-point tensors are cast to it as well; integer and bool tensors (token
    ids, class ids, masks) keep their dtype. An object with its own `.to()` is
    called `.to(device)`, or `.to(device=device, dtype=cast)` when casting; one
    whose `.to()` takes no dtype is moved without the cast.
    """
    tensor = _tensor_type()
    if isinstance(x, tensor):
        if cast is not None and x.is_floating_point():
            return x.to(device=device, dtype=cast)
        return x.to(device)
    if isinstance(x, Mapping):
        return _mapping(x, {k: to_device(v, device, cast) for k, v in x.items()})
    if callable(getattr(x, "to", None)) and not isinstance(x, type):
        return _own_to(x, device, cast)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(to_device(v, device, cast) for v in x))  # a named tuple
    if isinstance(x, (tuple, list)):
        return _sequence(x, [to_device(v, device, cast) for v in x])
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _dataclass(x, device, cast)
    return x


def _dataclass(x: Any, device: Any, cast: Any) -> Any:
    # A shallow copy with each field replaced: `dataclasses.replace` would run __init__ and
    # __post_init__ again (a field derived there derived twice, an init=False field reset,
    # an InitVar asked for), and the batch the model sees would not be the one made.
    out = copy.copy(x)
    for f in dataclasses.fields(x):
        if hasattr(x, f.name):
            object.__setattr__(out, f.name, to_device(getattr(x, f.name), device, cast))  # frozen ones too
    return out


def _own_to(x: Any, device: Any, cast: Any) -> Any:
    if cast is None:
        out = x.to(device)
    else:
        try:
            out = x.to(device=device, dtype=cast)
        except TypeError:  # a `.to()` that takes no dtype
            out = x.to(device)
    return x if out is None else out  # a `.to()` that moves in place and returns nothing


def _mapping(x: Mapping, moved: dict) -> Any:
    if type(x) is dict:
        return moved
    if isinstance(x, MutableMapping):
        # A shallow copy keeps the type and its other attributes (a BatchEncoding's
        # encodings); only the values are replaced. A copy that shares its storage with
        # the original (a mapping whose __copy__ is shallower still) would move the
        # user's own batch in place: then the original is put back as it was.
        before = {k: x[k] for k in moved}
        try:
            out = copy.copy(x)
            for k, v in moved.items():
                out[k] = v
            if out is not x and all(x[k] is before[k] for k in moved):
                return out
        except Exception:  # a mapping that cannot be copied: rebuilt below
            pass
        for k, v in before.items():
            if x[k] is not v:
                x[k] = v
    try:
        return type(x)(moved)
    except Exception:
        return moved


def _sequence(x: tuple | list, moved: list) -> Any:
    if type(x) in (tuple, list):
        return type(x)(moved)
    try:
        return type(x)(moved)  # a subclass that takes an iterable, as tuple and list do
    except Exception:
        return tuple(moved) if isinstance(x, tuple) else moved


def call_model(model: Any, inputs: Any) -> Any:
    """`model(**inputs)` for a mapping, `model(*inputs)` for a tuple or list (a named tuple
    too), else `model(inputs)`: what a hand-written loop does with each kind of batch."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "to"):
        return model(*inputs)
    return model(inputs)
