"""Precisions that train, and TF32 mode read and set whatever API a workload used.

- Pure fp16 with Adam/AdamW: torch's default eps (1e-8) is 0 in float16, and the first
  update divides by it. Resolution fills in a representable eps, and a trial with it trains;
  the same trial with 1e-8 forced in is `nonfinite`. The right answers come from torch's own
  float16 (`torch.tensor(x, dtype=torch.float16)`, `torch.finfo`), not from stepscope's rounding.
- TF32: once a workload sets torch's newer `fp32_precision` API, reading the legacy flags
  raises in torch >= 2.9. A workload that does so in its builder must neither fail the trial
  nor decide the mode its step runs in; the peak measurement puts back what it found.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from stepscope.orchestrator.grid import trial_id
from stepscope.workloads.measure.flop_peaks import cache as peak_cache
from stepscope.workloads.measure.flop_peaks import matmul
from stepscope.workloads.measure.precision import has_fp32_precision_api
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.params import FP16_ADAM_EPS, ParamError
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

FIXTURES = Path(__file__).parents[2] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import tf32_probe  # noqa: E402

HALF = torch.finfo(torch.float16)  # .tiny: the smallest normal float16, 2**-14; .max: 65504
TINY_MLP = dict(workload="mlp", depth=2, width=32, input_dim=16, batch_size=8, iterations=4, warmup=1,
                precision="fp16", count_flops=False)


def in_fp16(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float16))


def run(params: dict, search_paths=()) -> dict:
    return run_trial(Trial(index=0, trial_id="t0", repeat=0, gpu=None, params=params), "s", None,
                     search_paths=[str(p) for p in search_paths])


# ---------------------------------------------------------------- eps: resolution


def test_torchs_default_eps_is_zero_in_fp16_and_the_filled_in_one_is_a_normal_number():
    assert torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults["eps"] == 1e-8
    assert in_fp16(1e-8) == 0.0
    assert HALF.tiny <= in_fp16(FP16_ADAM_EPS) <= HALF.max


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_pure_fp16_with_adam_gets_a_representable_eps(optimizer):
    assert resolve_params({"workload": "mlp", "precision": "fp16", "optimizer": optimizer})["eps"] == FP16_ADAM_EPS


@pytest.mark.parametrize(("precision", "optimizer"), [
    ("fp32", "adamw"), ("tf32", "adam"), ("bf16", "adamw"), ("amp_fp16", "adamw"), ("fp16", "sgd"),
])
def test_eps_is_left_out_where_it_is_not_set_and_does_not_matter(precision, optimizer):
    assert "eps" not in resolve_params({"workload": "mlp", "precision": precision, "optimizer": optimizer})


def test_existing_trial_ids_do_not_change():
    # Computed with the resolution before `eps` existed (commit d9d5849): --resume finds these.
    assert trial_id(resolve_params({"workload": "mlp"}), None, 0) == "69c6941948b22546"
    assert trial_id(resolve_params({"workload": "mlp", "precision": "fp16", "optimizer": "sgd"}), None, 0) == "1bc148c28f4715e4"


@pytest.mark.parametrize(("precision", "optimizer"), [("fp32", "adamw"), ("fp16", "sgd"), ("amp_fp16", "adam")])
def test_a_set_eps_is_kept_as_set(precision, optimizer):
    out = resolve_params({"workload": "mlp", "precision": precision, "optimizer": optimizer, "eps": "1e-12"})
    assert out["eps"] == 1e-12  # refused only where the optimizer state is float16


@pytest.mark.parametrize("eps", [0, 1e-8, 3e-8, 5.9e-5, 6.1e-5, 2.0**-14, 6.2e-5, 1e-4, 1.0, 65504.0, 65519.0, 65520.0, 1e6])
def test_a_set_eps_is_refused_for_pure_fp16_adam_exactly_where_float16_cannot_hold_it(eps):
    want_ok = HALF.tiny <= in_fp16(eps) <= HALF.max  # torch's own rounding and limits
    params = {"workload": "mlp", "precision": "fp16", "optimizer": "adam", "eps": eps}
    if want_ok:
        assert resolve_params(params)["eps"] == eps
        return
    with pytest.raises(ParamError) as info:
        resolve_params(params)
    assert info.value.key == "eps"
    assert info.value.message.startswith(f"{float(eps)!r} rounds to ")
    assert info.value.message.endswith("; use a value from 6.1e-05 to 65504 (unset, it is 0.0001), or precision amp_fp16")


def test_a_negative_eps_is_refused_everywhere():
    with pytest.raises(ParamError, match="below the minimum 0"):
        resolve_params({"workload": "mlp", "eps": -1e-8})


# ---------------------------------------------------------------- eps: trials that train


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_pure_fp16_adam_trains_with_the_resolved_eps_and_not_with_torchs(optimizer, device):
    params = resolve_params({**TINY_MLP, "optimizer": optimizer, "device": device})
    row = run(params)
    assert row["status"] == "ok", row["error"]
    assert row["nonfinite_step"] is None and math.isfinite(row["final_loss"])

    # The same trial with only eps changed, to torch's default: the update divides by 0.
    broken = run({**params, "eps": 1e-8})
    assert broken["status"] == "nonfinite"
    # The first loss is computed before any update; the second, after one, is the first bad.
    assert broken["nonfinite_step"] == 1 and not math.isfinite(broken["final_loss"])


# ---------------------------------------------------------------- TF32


needs_new_api = pytest.mark.skipif(not has_fp32_precision_api(torch), reason="torch < 2.9 has no fp32_precision API")
NODES = [("generic", "all"), ("cuda", "all"), ("mkldnn", "all"), ("cuda", "matmul"), ("cuda", "conv"),
         ("cuda", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn")]
ON = {"cuda.matmul": "tf32", "cudnn.conv": "tf32", "cudnn.rnn": "tf32", "float32_matmul_precision": "high",
      "cuda.matmul.allow_tf32": True, "cudnn.allow_tf32": True}
OFF = {"cuda.matmul": "ieee", "cudnn.conv": "ieee", "cudnn.rnn": "ieee", "float32_matmul_precision": "highest",
       "cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False}


def new_api_state() -> dict:
    return {node: torch._C._get_fp32_precision_getter(*node) for node in NODES}


@pytest.fixture
def tf32_mode():
    """Put this process's TF32 mode back as it was, without stepscope's code: the legacy
    values first (their setters write some fp32_precision settings), then every setting."""
    legacy = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    state = new_api_state() if has_fp32_precision_api(torch) else {}
    yield
    torch.set_float32_matmul_precision(legacy[0])
    torch.backends.cudnn.allow_tf32 = legacy[1]
    for node, value in state.items():
        torch._C._set_fp32_precision_setter(*node, value)


@needs_new_api
def test_the_legacy_read_that_used_to_fail_does_fail_after_the_new_api(tf32_mode):
    torch.set_float32_matmul_precision("highest")  # TF32 off, through the legacy API
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # and on through the new one, as a workload may
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 - the read is what raises


@needs_new_api
@pytest.mark.parametrize("device", DEVICES)
def test_a_builder_that_sets_the_new_api_neither_fails_the_trial_nor_sets_its_mode(device, tf32_mode, tmp_path, monkeypatch):
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path))  # the peak is measured for real, not read
    for precision in ("fp32", "tf32", "fp32"):  # one process, as a reused worker runs them
        tf32_probe.SEEN.clear()
        params = resolve_params({"workload": "tf32_probe:build", "precision": precision, "iterations": 2,
                                 "warmup": 1, "batch_size": 4, "device": device})
        row = run(params, [FIXTURES])
        assert row["status"] == "ok", row["error"]
        assert row["peak_tflops_measured"] is not None  # its measurement, after the builder ran, worked
        for seen in tf32_probe.SEEN[-3:]:  # the loop's steps (the FLOP count's pass ran before)
            assert seen == (ON if precision == "tf32" else OFF), precision


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("set_by", ["new_api", "legacy"])
def test_the_peak_measurement_runs_in_the_precisions_mode_and_puts_back_the_process_mode(
        precision, set_by, tf32_mode, tmp_path, monkeypatch):
    if set_by == "new_api":
        if not has_fp32_precision_api(torch):
            pytest.skip("torch < 2.9 has no fp32_precision API")
        # What a user's script may have set: defaults inherited, one override, mkldnn in bf16.
        torch.backends.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    else:
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.allow_tf32 = False
    before_new = new_api_state() if has_fp32_precision_api(torch) else {}
    before_legacy = None if set_by == "new_api" else (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    during = []

    def timed(torch_, dev, dtype, n, reps):
        during.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return 1.0

    monkeypatch.setattr(matmul, "_time_matmul", timed)
    assert peak_cache.measured_matmul_peak("cpu", precision, tmp_path, refresh=True) > 0
    assert during and set(during) == {("high", True) if precision == "tf32" else ("highest", False)}
    assert (new_api_state() if has_fp32_precision_api(torch) else {}) == before_new
    if before_legacy is not None:
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before_legacy
