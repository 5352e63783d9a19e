"""MLP classifier on random features: the smallest built-in, mostly matmuls.

`depth` hidden layers of `width` units (Linear + ReLU) map `input_dim` features
to `num_classes` logits; the loss is cross entropy against random class ids.

Batches come from a small pool made at build time with a `torch.Generator`
seeded from `params["seed"]`, so they are deterministic, leave torch's global
generator alone, and keep the `data` phase cheap.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from stepscope import Workload

POOL_SIZE = 4  # distinct batches cycled through; enough that no step reuses the last one's


def make_model(depth: int, width: int, input_dim: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    features = input_dim
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def build(params: dict) -> Workload:
    model = make_model(params["depth"], params["width"], params["input_dim"], params["num_classes"])
    gen = torch.Generator().manual_seed(params["seed"])
    shape = (params["batch_size"], params["input_dim"])
    pool = [
        (
            torch.randn(shape, generator=gen, device="cpu"),
            torch.randint(params["num_classes"], shape[:1], generator=gen, device="cpu"),
        )
        for _ in range(POOL_SIZE)
    ]
    return Workload(
        model=model,
        make_batch=itertools.cycle(pool).__next__,
        loss_fn=F.cross_entropy,
    )
