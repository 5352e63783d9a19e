"""The built-in workloads: exact parameter counts and one real training step each."""

from __future__ import annotations

import pytest
import torch

from stepscope import Workload
from stepscope.workloads.builtin.gpt import model as gpt
from stepscope.workloads.builtin.resnet import model as resnet
from stepscope.workloads.registry import BUILTINS, load_builder, resolve_params


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once


@pytest.mark.parametrize(
    ("depth", "expected"),
    # torchvision's resnet18/34/50/101 at 1000 classes
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)],
)
def test_resnet_matches_torchvision_count(depth: int, expected: int) -> None:
    with torch.device("meta"):  # counting needs shapes, not memory
        model = resnet.ResNet(depth, num_classes=1000)
    assert _count(model) == expected


def test_gpt2_small_shape_has_124m_params() -> None:
    with torch.device("meta"):
        model = gpt.GPT(n_layer=12, n_head=12, d_model=768, seq_len=1024, vocab_size=50257)
    assert _count(model) == 124_439_808


def test_gpt_ties_lm_head_to_token_embedding() -> None:
    work = _build("gpt")
    assert work.model.lm_head.weight is work.model.tok_emb.weight


def _build(name: str, **overrides: object) -> Workload:
    params = resolve_params({"workload": name, **overrides})
    return load_builder(name)(params)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_trains_one_step_at_defaults(name: str) -> None:
    torch.manual_seed(0)
    work = _build(name)
    assert work.make_optimizer is None
    inputs, targets = work.make_batch()
    outputs = work.model(inputs)
    # The outputs carry one row of logits per target.
    assert outputs.shape[:-1] == targets.shape
    loss = work.loss_fn(outputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    before = [p.detach().clone() for p in work.model.parameters()]
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-3)
    opt.step()
    opt.zero_grad()
    after = list(work.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_make_batch_gives_cpu_tensors_of_batch_size(name: str) -> None:
    work = _build(name, batch_size=3)
    for _ in range(2):
        for tensor in work.make_batch():
            assert isinstance(tensor, torch.Tensor)
            assert tensor.device.type == "cpu"
            assert tensor.shape[0] == 3
        inputs, targets = work.make_batch()
        assert targets.dtype == torch.int64


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_batches_depend_on_seed_only(name: str) -> None:
    first = _build(name, seed=1).make_batch()
    torch.manual_seed(123)  # the global generator must not matter
    again = _build(name, seed=1).make_batch()
    other = _build(name, seed=2).make_batch()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_resnet_pool_is_bounded_for_large_images() -> None:
    # 128 images of 224x224 are 74 MiB: a full pool would pass the budget, so it shrinks.
    work = _build("resnet", batch_size=128, image_size=224, depth=18)
    seen = {id(work.make_batch()[0]) for _ in range(2 * resnet.MAX_POOL_SIZE)}
    assert 1 <= len(seen) < resnet.MAX_POOL_SIZE
    assert len(seen) * 128 * 3 * 224 * 224 * 4 <= resnet.POOL_BYTES
