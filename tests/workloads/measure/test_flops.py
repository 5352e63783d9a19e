"""FLOP counting: published figures, the analytic GPT estimate, exact small
cases, the uncounted-op report, the CPU fallback, no side effects, and model
against hardware FLOPs (activation checkpointing's recompute) with MFU and HFU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode

from stepscope import Workload
from stepscope.workloads.builtin.gpt import analytic_flops as analytic_gpt_flops
from stepscope.workloads.builtin.gpt import model as gpt
from stepscope.workloads.builtin.mlp import model as mlp
from stepscope.workloads.builtin.resnet import model as resnet
from stepscope.workloads.measure.flops import FlopCount, FlopCountError, count_step_flops
from stepscope.workloads.registry import BUILTINS, load_builder, resolve_params

FIXTURES = Path(__file__).parents[2] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import checkpointed  # noqa: E402

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


# ------------------------------------------------ model FLOPs, hardware FLOPs (PaLM appendix B)

B, D, W, K, BLOCKS = 4, 8, 16, 4, 2  # checkpointed.build's defaults, and this batch size


def _linear(i: int, o: int) -> int:
    """One Linear's forward on the batch: a (B x i) @ (i x o) matmul, 2 FLOPs per multiply-add."""
    return 2 * B * i * o


def _checkpointed(mode: str) -> FlopCount:
    return count_step_flops(checkpointed.build, {"batch_size": B, "checkpoint": mode})


# Forward: every Linear once. Backward: per Linear a weight gradient and an input gradient, each
# as large as its forward matmul, less `inp`'s input gradient (the batch needs none).
FORWARD = _linear(D, W) + BLOCKS * 2 * _linear(W, W) + _linear(W, K)
BACKWARD = 2 * FORWARD - _linear(D, W)


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_checkpointing_leaves_model_flops_as_without_it(mode: str) -> None:
    plain, ckpt = _checkpointed("none"), _checkpointed(mode)
    assert (plain.forward, plain.backward, plain.recompute) == (FORWARD, BACKWARD, 0)
    assert (ckpt.forward, ckpt.backward) == (plain.forward, plain.backward)  # the un-checkpointed twin's
    assert ckpt.step == plain.step == plain.hardware
    assert ckpt.hardware == ckpt.step + ckpt.recompute > ckpt.step


def test_reentrant_checkpoint_recomputes_each_block_whole() -> None:
    # Each block's forward, Linear a and Linear b, once more during backward.
    assert _checkpointed("reentrant").recompute == BLOCKS * 2 * _linear(W, W)


def test_non_reentrant_checkpoint_stops_recomputing_when_it_has_what_backward_needs() -> None:
    # Non-reentrant checkpoint stops once every tensor the block saved is rebuilt: the last is
    # b's input, relu(a(x)), saved when b's addmm is called, before it runs. So only a re-runs...
    assert _checkpointed("non_reentrant").recompute == BLOCKS * _linear(W, W)
    # ...and with early stop off (torch's documented switch) the whole block re-runs.
    with set_checkpoint_early_stop(False):
        assert _checkpointed("non_reentrant").recompute == BLOCKS * 2 * _linear(W, W)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_backward_and_recompute_split_what_torch_counts_in_backward(reentrant: bool) -> None:
    """torch's own counter, with no split, over the same checkpointed step on the CPU."""
    count = _checkpointed("reentrant" if reentrant else "non_reentrant")
    torch.manual_seed(0)
    model = checkpointed.CheckpointedMLP(D, W, K, BLOCKS, reentrant)
    loss = F.cross_entropy(model(torch.randn(B, D)), torch.randint(0, K, (B,)))
    with FlopCounterMode(display=False) as everything:
        loss.backward()
    assert count.backward + count.recompute == everything.get_total_flops()


def _gpt2_builder(checkpointing: bool, reentrant: bool = False):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64,
                        bos_token_id=0, eos_token_id=0)

    def build(params: dict) -> Workload:
        model = GPT2LMHeadModel(config)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        ids = torch.randint(0, config.vocab_size, (params["batch_size"], 32))
        return Workload(
            model=model,
            make_batch=lambda: ({"input_ids": ids}, ids),
            loss_fn=lambda out, y: F.cross_entropy(out.logits.flatten(0, 1), y.flatten()),
        )

    return build, config


@pytest.fixture(scope="module")
def gpt2_blocks_forward() -> int:
    """FLOPs of the un-checkpointed GPT-2's transformer blocks in one forward, by torch's
    own counter, module by module (attention as two bmm's, as the count runs it)."""
    build, config = _gpt2_builder(checkpointing=False)
    work = build({"batch_size": 2})
    inputs, _ = work.make_batch()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        work.model.train()(**inputs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return sum(per_module[f"GPT2LMHeadModel.transformer.h.{i}"] for i in range(config.n_layer))


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # transformers 5
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_transformers_gradient_checkpointing_keeps_model_flops(reentrant: bool, gpt2_blocks_forward: int) -> None:
    plain = count_step_flops(_gpt2_builder(checkpointing=False)[0], {"batch_size": 2})
    ckpt = count_step_flops(_gpt2_builder(checkpointing=True, reentrant=reentrant)[0], {"batch_size": 2})
    assert plain.recompute == 0
    assert (ckpt.forward, ckpt.backward) == (plain.forward, plain.backward)
    # GPT-2's blocks end in a dropout, whose mask is saved: each block is recomputed whole.
    assert ckpt.recompute == gpt2_blocks_forward > 0
    # Hand count of that: per block and token, 2 x (64x192 + 64x64 + 64x256 + 256x64) for the
    # projections, plus QK^T and AV, 2 x 2 x T x d per token; 2 x 32 tokens, 2 blocks.
    tokens, d, t = 2 * 32, 64, 32
    assert gpt2_blocks_forward == 2 * tokens * (2 * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + 2 * 2 * t * d)


def test_flop_count_refuses_negative_recompute() -> None:
    with pytest.raises(ValueError, match="recompute must be >= 0"):
        FlopCount(forward=1, backward=2, recompute=-1, per_sample_forward=1.0, device_used="meta")


def test_hfu_over_mfu_is_hardware_over_model_flops(tmp_path, monkeypatch) -> None:
    """`utilization.rates` on the CPU: both rates by hand, MFU and HFU against the one peak."""
    from stepscope.workloads.measure import device as devices
    from stepscope.workloads.measure import utilization
    from stepscope.workloads.measure.records import Work

    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    work = Work(flops_forward=3 * 10**9, flops_backward=6 * 10**9, flops_recompute=2 * 10**9)
    got = utilization.rates(torch, cpu, "fp32", work, 0.5, 10, devices.describe(torch, cpu))
    assert got.achieved_tflops == pytest.approx(9e9 / 0.05 / 1e12, rel=1e-12)  # 0.18
    assert got.achieved_hardware_tflops == pytest.approx(11e9 / 0.05 / 1e12, rel=1e-12)  # 0.22
    peak = got.peak_tflops_measured
    assert peak > 0
    assert got.mfu_measured == pytest.approx(0.18 / peak, rel=1e-12)
    assert got.hfu_measured == pytest.approx(0.22 / peak, rel=1e-12)
    assert got.hfu_measured / got.mfu_measured == pytest.approx(11 / 9, rel=1e-12)
    assert got.mfu_datasheet is None and got.hfu_datasheet is None  # no datasheet for a CPU
    plain = utilization.rates(torch, cpu, "fp32", Work(flops_forward=3 * 10**9, flops_backward=6 * 10**9,
                                                        flops_recompute=0), 0.5, 10, devices.describe(torch, cpu))
    assert plain.hfu_measured == plain.mfu_measured == got.mfu_measured  # no recompute: the same


def test_a_checkpointed_trial_stores_model_and_hardware_flops_apart(tmp_path, monkeypatch) -> None:
    from stepscope.workloads.measure.runner import run_trial
    from stepscope.workloads.trial import Trial

    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    params = resolve_params({"workload": "checkpointed:build", "checkpoint": "reentrant", "batch_size": B,
                             "iterations": 3, "warmup": 1})
    row = run_trial(Trial(index=0, trial_id="t0", repeat=0, gpu=None, params=params), "s", None,
                    search_paths=[str(FIXTURES)])
    assert row["status"] == "ok" and row["flops_error"] is None
    recompute = BLOCKS * 2 * _linear(W, W)
    assert (row["flops_forward"], row["flops_backward"], row["flops_recompute"]) == (FORWARD, BACKWARD, recompute)
    model, hardware = FORWARD + BACKWARD, FORWARD + BACKWARD + recompute
    step_s = row["measured_wall_s"] / 3
    assert row["achieved_tflops"] == pytest.approx(model / step_s / 1e12, rel=1e-9)
    assert row["achieved_hardware_tflops"] == pytest.approx(hardware / step_s / 1e12, rel=1e-9)
    assert row["hfu_measured"] / row["mfu_measured"] == pytest.approx(hardware / model, rel=1e-12)
