"""ResNet image classifier (He et al., 2015), written to match torchvision's layout.

Depths 18 and 34 stack basic blocks, 50 and 101 bottleneck blocks (expansion 4,
stride on the 3x3 conv as in torchvision's "v1.5"). ImageNet stem (7x7 conv
stride 2, BatchNorm, ReLU, 3x3 max pool stride 2), four stages, adaptive average
pool, fc. At depth 50 with 1000 classes it has torchvision's 25,557,032
parameters; weights use torchvision's init (kaiming normal, fan_out, for convs;
BatchNorm weight 1, bias 0).

Batches are random images with random class ids, from a small pool made at
build time with a `torch.Generator` seeded from `params["seed"]`, so they are
deterministic, leave torch's global generator alone, and keep `data` cheap.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from stepscope import Workload

MAX_POOL_SIZE = 4
POOL_BYTES = 256 * 2**20  # large images at large batches would otherwise hold GBs of pool


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: the BatchNorm that follows has its own shift.
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            _conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), _conv_bn(width, c_out, 3)
        )
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            _conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            _conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            _conv_bn(width, c_out, 1),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return _conv_bn(c_in, c_out, 1, stride)


LAYOUTS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        block, counts = LAYOUTS[depth]
        self.stem = nn.Sequential(
            _conv_bn(3, 64, 7, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, c_in = [], 64
        for i, count in enumerate(counts):
            width = 64 * 2**i
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1  # each stage after the first halves H, W
                stages.append(block(c_in, width, stride))
                c_in = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(params: dict) -> Workload:
    model = ResNet(params["depth"], params["num_classes"])
    n, size = params["batch_size"], params["image_size"]
    pool_size = max(1, min(MAX_POOL_SIZE, POOL_BYTES // (n * 3 * size * size * 4)))
    gen = torch.Generator().manual_seed(params["seed"])
    pool = [
        (
            torch.randn((n, 3, size, size), generator=gen, device="cpu"),
            torch.randint(params["num_classes"], (n,), generator=gen, device="cpu"),
        )
        for _ in range(pool_size)
    ]
    return Workload(
        model=model,
        make_batch=itertools.cycle(pool).__next__,
        loss_fn=F.cross_entropy,
    )
