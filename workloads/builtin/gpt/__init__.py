"""gpt: a decoder-only transformer language model, GPT-2's shape (see `model.py`).

Torch-free: the declaration, the check that d_model splits into heads, and the
closed-form FLOP count (PaLM's formula) that `trials.flops_analytic` stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepscope.workloads.builtin.base import BuiltinInfo
from stepscope.workloads.params import Param, ParamError


def check(p: Mapping[str, Any]) -> None:
    if p["d_model"] % p["n_head"]:
        raise ParamError("d_model", f"d_model {p['d_model']} must be a multiple of n_head {p['n_head']}")


def analytic_flops(params: Mapping[str, Any]) -> int:
    """Training FLOPs of one gpt step by the PaLM formula: (6N + 12·L·d·T) per
    token, times batch_size·seq_len tokens.

    6N is a forward (2N) and a backward (4N) through every weight; 12·L·d·T is
    the two attention matmuls (QKᵀ and AV, 2·T·d each per layer, forward) times
    3 for the backward, over the full T x T scores (no causal saving).

    N is nanoGPT's `get_num_params(non_embedding=True)`, the N its `estimate_mfu`
    uses: every parameter but the position embedding. The token embedding IS in
    N, counted once: it is tied to the lm_head, whose d x vocab matmul is real
    work (39M of GPT-2 small's 124M parameters; leaving it out, as "non-embedding"
    N does for untied models, would undercount by ~30%). Biases and LayerNorm
    weights are in N too (nanoGPT keeps them; they are 0.1% of it), so this sits
    just above the counted figure, which has no FLOPs for them.
    """
    layers, d, seq = params["n_layer"], params["d_model"], params["seq_len"]
    per_block = 12 * d * d + 13 * d  # qkv, proj, 4x MLP weights and biases; 2 LayerNorms
    n = params["vocab_size"] * d + layers * per_block + 2 * d  # tied embedding, blocks, ln_f
    tokens = params["batch_size"] * seq
    return (6 * n + 12 * layers * d * seq) * tokens


INFO = BuiltinInfo(
    name="gpt",
    package=__name__,
    order=3,
    description="decoder-only transformer language model (GPT-2 style, tied embeddings)",
    params=(
        Param("n_layer", int, 2, "transformer blocks", minimum=1),
        Param("n_head", int, 4, "attention heads", minimum=1),
        Param("d_model", int, 128, "embedding width; a multiple of n_head", minimum=1),
        Param("seq_len", int, 64, "tokens per sequence (the context length)", minimum=1),
        Param("vocab_size", int, 1024, "vocabulary size", minimum=2),
    ),
    check=check,
    analytic_flops=analytic_flops,
)
