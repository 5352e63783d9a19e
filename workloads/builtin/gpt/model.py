"""Decoder-only transformer language model in the shape of GPT-2.

Token and learned position embeddings, `n_layer` pre-LayerNorm blocks (causal
self-attention through `scaled_dot_product_attention`, then a 4x GELU MLP), a
final LayerNorm and an lm_head tied to the token embedding. Linear and
LayerNorm layers carry biases as in GPT-2, so GPT-2 small's shape (12 layers,
12 heads, d_model 768, seq_len 1024, vocab 50257) has 124,439,808 parameters.
Weights follow GPT-2's init: normal(0, 0.02), residual projections scaled down
by sqrt(2 * n_layer).

Batches are random token ids, targets the same sequence shifted by one, from a
small pool made at build time with a `torch.Generator` seeded from
`params["seed"]`, so they are deterministic, leave torch's global generator
alone, and keep the `data` phase cheap.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from stepscope import Workload

POOL_SIZE = 4


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (b, t, 3d) -> three (b, n_head, t, head_dim) tensors
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(
        self, n_layer: int, n_head: int, d_model: int, seq_len: int, vocab_size: int
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        self._init_weights(n_layer)

    def _init_weights(self, n_layer: int) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        # Each block adds two projections to the residual stream; scaling them
        # keeps its variance from growing with depth (GPT-2 paper, section 2.3).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def build(params: dict) -> Workload:
    model = GPT(
        params["n_layer"],
        params["n_head"],
        params["d_model"],
        params["seq_len"],
        params["vocab_size"],
    )
    gen = torch.Generator().manual_seed(params["seed"])
    shape = (params["batch_size"], params["seq_len"] + 1)
    pool = []
    for _ in range(POOL_SIZE):
        tokens = torch.randint(params["vocab_size"], shape, generator=gen, device="cpu")
        # Contiguous copies, so the `to_device` phase moves dense tensors.
        pool.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return Workload(model=model, make_batch=itertools.cycle(pool).__next__, loss_fn=loss_fn)
