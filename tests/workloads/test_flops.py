"""FLOP counting: published figures, the analytic GPT estimate, exact small
cases, the uncounted-op report, the CPU fallback, and no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stepscope import Workload
from stepscope.workloads.builtin.gpt import analytic_flops as analytic_gpt_flops
from stepscope.workloads.builtin.gpt import model as gpt
from stepscope.workloads.builtin.mlp import model as mlp
from stepscope.workloads.builtin.resnet import model as resnet
from stepscope.workloads.measure.flops import FlopCount, FlopCountError, count_step_flops
from stepscope.workloads.registry import BUILTINS, load_builder, resolve_params

GPT2_SMALL = {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": 1024, "vocab_size": 50257}


def _params(name: str, **overrides: object) -> dict:
    return resolve_params({"workload": name, **overrides})


@pytest.fixture(scope="module")
def resnet50() -> FlopCount:
    params = _params("resnet", depth=50, image_size=224, num_classes=1000, batch_size=2)
    return count_step_flops(resnet.build, params)


def test_resnet50_forward_is_8_18_gflop_per_image(resnet50: FlopCount) -> None:
    # torchvision documents 4.09 "GFLOPS" for resnet50 at 224x224, which are
    # multiply-adds: 8.18 GFLOP at 2 per multiply-add. Counted: 8,178,368,512.
    assert resnet50.device_used == "meta"
    assert resnet50.per_sample_forward == pytest.approx(8.18e9, rel=0.01)
    assert resnet50.per_sample_forward == resnet50.forward / 2


def test_resnet_step_is_about_three_forwards(resnet50: FlopCount) -> None:
    # Backward is two convolutions per forward one (grad of input, grad of
    # weight), less the stem's input gradient, which nothing needs.
    assert 2.9 <= resnet50.step / resnet50.forward <= 3.1
    assert resnet50.step / resnet50.forward < 3


@pytest.mark.parametrize(
    "shape",
    [GPT2_SMALL, {"n_layer": 2, "n_head": 4, "d_model": 128, "seq_len": 64, "vocab_size": 1024}],
    ids=["gpt2-small", "small"],
)
def test_gpt_count_matches_analytic_estimate(shape: dict) -> None:
    params = _params("gpt", batch_size=1, **shape)
    counted = count_step_flops(gpt.build, params)
    assert counted.device_used == "meta"
    assert counted.step == pytest.approx(analytic_gpt_flops(params), rel=0.05)
    assert counted.backward == 2 * counted.forward  # every matmul's input needs a gradient


def test_analytic_gpt_n_is_all_parameters_but_position_embedding() -> None:
    params = _params("gpt", batch_size=3, **GPT2_SMALL)
    with torch.device("meta"):
        model = gpt.GPT(**GPT2_SMALL)
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()
    layers, d, seq = params["n_layer"], params["d_model"], params["seq_len"]
    per_token = analytic_gpt_flops(params) // (3 * seq)
    assert per_token == 6 * n + 12 * layers * d * seq
    assert n == 123_653_376  # 124,439,808 less 1024 x 768 position embeddings


def test_mlp_forward_is_exactly_its_matmuls() -> None:
    params = _params("mlp", depth=3, width=64, input_dim=32, num_classes=10, batch_size=8)
    count = count_step_flops(mlp.build, params)
    layers = [(32, 64), (64, 64), (64, 64), (64, 10)]
    matmuls = 2 * 8 * sum(i * o for i, o in layers)
    # Cross entropy (log_softmax, nll_loss) adds nothing: the counter has no formula for it.
    assert count.forward == matmuls
    # Backward: grad of input and of weight per layer, less the first layer's input grad.
    assert count.backward == 2 * matmuls - 2 * 8 * 32 * 64


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_count_on_meta_with_nothing_uncounted(name: str) -> None:
    count = count_step_flops(load_builder(name), _params(name))
    assert count.device_used == "meta" and count.fallback_reason is None
    assert count.uncounted == ()
    assert count.forward > 0 and count.backward > 0


class _VectorProbe(nn.Module):
    """A linear probe with a vector weight: `x @ w` is aten.mv, which has no formula."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def _build_probe(params: dict) -> Workload:
    batch = (torch.randn(params["batch_size"], 16), torch.randn(params["batch_size"]))
    return Workload(model=_VectorProbe(16), make_batch=lambda: batch, loss_fn=F.mse_loss)


def test_an_op_without_a_formula_is_reported_uncounted() -> None:
    count = count_step_flops(_build_probe, {"batch_size": 4})
    assert count.uncounted == ("aten.mv",)
    assert count.forward == 0  # the real 2 x 4 x 16 is missed, hence the report


class _DataDependent(nn.Module):
    """Branches on a value, which a meta tensor does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * 2 if y.abs().max().item() > 1e6 else y


def _build_data_dependent(params: dict) -> Workload:
    batch = (torch.randn(params["batch_size"], 16), torch.randint(4, (params["batch_size"],)))
    return Workload(model=_DataDependent(), make_batch=lambda: batch, loss_fn=F.cross_entropy)


def test_falls_back_to_cpu_when_meta_fails() -> None:
    count = count_step_flops(_build_data_dependent, {"batch_size": 4})
    assert count.device_used == "cpu"
    assert "meta" in count.fallback_reason and "item" in count.fallback_reason
    assert count.forward == 2 * 4 * 16 * 4
    assert count.uncounted == ()


def test_cpu_fallback_counts_what_meta_counts() -> None:
    def gpt_refusing_meta(params: dict) -> Workload:
        if torch.get_default_device().type == "meta":
            raise RuntimeError("no meta here")
        return gpt.build(params)

    params = _params("gpt")
    on_cpu = count_step_flops(gpt_refusing_meta, params)
    on_meta = count_step_flops(gpt.build, params)
    assert on_cpu.device_used == "cpu" and on_cpu.fallback_reason == "RuntimeError: no meta here"
    assert (on_cpu.forward, on_cpu.backward) == (on_meta.forward, on_meta.backward)


def test_failing_on_both_devices_names_both() -> None:
    def broken(params: dict) -> Workload:
        raise ValueError("bad shape")

    with pytest.raises(FlopCountError, match="on meta ValueError: bad shape; on cpu ValueError: bad shape"):
        count_step_flops(broken, {"batch_size": 1})


@pytest.mark.parametrize("build", [mlp.build, _build_data_dependent], ids=["meta", "cpu-fallback"])
def test_counting_leaves_rng_and_grad_mode_alone(build) -> None:
    params = _params("mlp")
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    with torch.no_grad():
        count = count_step_flops(build, params)
        assert not torch.is_grad_enabled()
    assert count.backward > 0  # autograd ran inside, even under no_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.is_grad_enabled()


def test_flop_count_rejects_an_unknown_device() -> None:
    with pytest.raises(ValueError, match="device_used must be one of"):
        FlopCount(forward=1, backward=2, per_sample_forward=1.0, device_used="cuda")
