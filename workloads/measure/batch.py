"""A batch on its way to the model: moved to the device, and passed to the model.

One mover and one caller, used by the timed loop (`runner`) and by the untimed
FLOP-counting pass (`flops`), so that both see the same batch the same way.
"""

from __future__ import annotations

from typing import Any


def to_device(x: Any, device: Any, cast: Any = None) -> Any:
    """`x` on `device`: a tensor (anything with `.to`), or a tuple/list/dict of them,
    rebuilt with the same type. With `cast` (a torch dtype; bf16/fp16 runs, where the
    model itself was cast), floating-point tensors are cast to it as well; integer
    tensors (token ids, class ids) keep their dtype. Other values pass through."""
    if hasattr(x, "to"):
        if cast is not None and x.is_floating_point():
            return x.to(device=device, dtype=cast)
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device, cast) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, cast) for k, v in x.items()}
    return x


def call_model(model: Any, inputs: Any) -> Any:
    """`model(**inputs)` for a dict, `model(*inputs)` for a tuple or list, else `model(inputs)`."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
