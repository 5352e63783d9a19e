"""Memory columns mean what their names say, on models with a hand formula
(tests/fixtures/memory_models.py) and through the real runner on the CPU.

bn_mlp is Linear(i, h) -> BatchNorm1d(h) -> ReLU -> Linear(h, o) with an MSE loss,
batch B, the input not requiring grad. What autograd saves for backward, by hand:
- Linear 1 (addmm): its input x, B*i (its weight is not needed: x needs no grad);
- BatchNorm1d (training): its input, B*h, and the batch mean and inverse std, 2*h;
  also its weight (a parameter) and running_mean/running_var (buffers): the model's
  state, not activations;
- ReLU: its output, B*h; Linear 2 saves the same tensor (counted once) and its
  weight (a parameter);
- mse_loss: the output and the target, 2*B*o.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stepscope.workloads.measure import memory
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

FIXTURES = Path(__file__).parents[2] / "fixtures"
B, IN, H, OUT = 16, 32, 64, 8


def run(workload: str, **params) -> dict:
    p = resolve_params({"workload": f"memory_models:{workload}", "batch_size": B, "iterations": 2, "warmup": 1,
                        "count_flops": False, "inputs": IN, "hidden": H, "outputs": OUT, **params})
    row = run_trial(Trial(0, "t0", 0, None, p), "s", None, search_paths=[str(FIXTURES)])
    assert row["status"] == "ok", row["error"]
    return row


def test_activation_bytes_leave_out_batchnorm_buffers():
    row = run("bn_mlp")
    assert row["activation_bytes"] == 4 * (B * IN + B * H + 2 * H + B * H + 2 * B * OUT)
    assert row["autocast_weight_bytes"] == 0


def test_autocast_weight_copies_are_counted_apart_from_activations():
    """Under amp_bf16 (CPU autocast) Linear 2's weight is saved as a bf16 copy, h*o*2
    bytes; Linear 1's is not saved (its input needs no grad). The activations are the
    bf16 x (B*i*2), BatchNorm's bf16 input (B*h*2) and fp32 statistics (2*h*4), ReLU's
    bf16 output (B*h*2), and the loss's output and target, which autocast runs in fp32
    (2*B*o*4)."""
    row = run("bn_mlp", precision="amp_bf16")
    assert row["autocast_weight_bytes"] == H * OUT * 2
    assert row["activation_bytes"] == B * IN * 2 + B * H * 2 + 2 * H * 4 + B * H * 2 + 2 * B * OUT * 4


def test_a_frozen_weight_s_autocast_copy_is_a_weight_copy_too():
    """frozen_base: z = pre(x); relu(base(z) + up(down(z))) -> head, base frozen, rank 4,
    amp_bf16. A frozen weight's bf16 copy has no autograd history, but is saved for z's
    gradient all the same. By hand, bf16 (2 bytes) unless said:
    - weight copies: base's (H*IN, the frozen one), down's (4*IN), up's (H*4), head's (OUT*H);
      pre's is not saved (x needs no grad);
    - activations: x cast for pre (B*IN), z for down's weight grad (B*IN), down's output
      for up's (B*4), relu's output (B*H), the loss's fp32 output and target (2*B*OUT*4)."""
    row = run("frozen_base", precision="amp_bf16")
    assert row["autocast_weight_bytes"] == 2 * (H * IN + 4 * IN + H * 4 + OUT * H)
    assert row["activation_bytes"] == 2 * (B * IN + B * IN + B * 4 + B * H) + 2 * B * OUT * 4


def test_activation_bytes_do_not_depend_on_warmup():
    figures = {w: run("bn_mlp", warmup=w)["activation_bytes"] for w in (0, 1, 3)}
    assert len(set(figures.values())) == 1 and figures[0] > 0


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_state_counts_a_0d_parameter(optimizer):
    """A learnable 0-d temperature has 0-d moments (Adam: 2, SGD momentum: 1 per
    parameter), each the parameter's size: state = k * param_bytes exactly."""
    row = run("temperature", optimizer=optimizer)
    per_param = {"adam": 2, "adamw": 2, "sgd": 1}[optimizer]
    assert row["param_bytes"] == 4 * (IN * OUT + OUT + 1)
    assert row["optimizer_state_bytes"] == per_param * row["param_bytes"]


def test_optimizer_state_leaves_out_step_counters_only():
    p = torch.nn.Parameter(torch.tensor(2.0))
    q = torch.nn.Parameter(torch.ones(3, 5))
    opt = torch.optim.Adam([p, q])
    (p * q).sum().backward()
    opt.step()
    steps = [s["step"] for s in opt.state.values()]
    assert all(torch.is_tensor(s) and s.dim() == 0 for s in steps)  # there are step counters...
    assert memory.optimizer_state_bytes(opt) == 2 * 4 * (1 + 15)  # ...and they are left out


PEAK_PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from stepscope.workloads.measure.runner import run_trial
    from stepscope.workloads.registry import resolve_params
    from stepscope.workloads.trial import Trial
    import resource
    p = resolve_params({"workload": "memory_models:bn_mlp", "batch_size": 16, "iterations": 2,
                        "warmup": 0, "count_flops": False})
    trial = Trial(0, "t0", 0, None, p)
    steps = []
    class Capture:
        def write_trial(self, sweep, trial_id, trial_row, step_rows, device_rows):
            steps.extend(step_rows)
    run_trial(trial, "s", Capture(), search_paths=[sys.argv[1]])
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"phase_peaks": [s["peak_rss_bytes"] for s in steps], "vmhwm": hwm,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
@pytest.mark.slow  # two processes
def test_peak_rss_is_this_process_s_own_even_when_its_parent_was_large(tmp_path):
    """A parent holding ~1.2 GiB starts the trial's process (fork + exec, as a shell or a
    scheduler does): exec seeds the child's ru_maxrss with the parent's peak, so that
    figure would be >= 1.2 GiB. Every phase's peak must be this process's own: at most
    its lifetime peak (the kernel's VmHWM for it, read at the end), far below the parent's."""
    script = tmp_path / "probe.py"
    script.write_text(PEAK_PROBE)
    parent = textwrap.dedent(f"""
        import subprocess, sys
        hog = bytearray(1200 * 2**20)  # touched: resident
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        out = subprocess.run([sys.executable, {str(script)!r}, {str(FIXTURES)!r}], capture_output=True, text=True)
        sys.stdout.write(out.stdout); sys.stderr.write(out.stderr)
        sys.exit(out.returncode)
    """)
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["ru_maxrss"] >= 1200 * 2**20  # the seeded figure, which stepscope must not report
    assert got["vmhwm"] < 1000 * 2**20  # the child itself never held that much
    assert all(0 < peak <= got["vmhwm"] for peak in got["phase_peaks"])
