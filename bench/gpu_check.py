"""The GPU check: on a machine with a GPU, one command says whether stepscope measures it right.

    python bench/gpu_check.py              # on a GPU node: gpu tests + a small grid on CUDA
    python bench/gpu_check.py --device cpu --quick --no-tests   # the CPU twin (what CI runs)

1. Runs the tests marked `gpu` (`pytest -m gpu`), which are skipped where there is no CUDA.
2. Runs a small grid through `stepscope trial` (Ray-free, each trial in a fresh
   process, as `isolation: process` would): mlp, resnet and gpt in `fp32`, `tf32`
   and `amp_bf16`, Adam, into a temporary store.
3. Reads the rows back with pyarrow (DuckDB is not needed) and checks, per trial:
   - step: the device phase times of a measured step, with the GPU's idle gaps
     between them, add up to the synchronised host-timed step (measured_wall_s /
     measured_steps) within 5%; the phases alone and the gaps are shown beside;
   - memory: parameter and gradient bytes are exactly 4N (all three precisions keep
     fp32 weights) and Adam's state exactly 8N, N the parameter count;
   - MFU against the measured matmul peak, and on a GPU against the datasheet peak
     of the exact variant, lies in (0, 1].
4. Runs the first trial twice more through `isolation: process`'s fork server
   (`stepscope.orchestrator.forkserver`, without Ray): each in a fresh process forked from one
   server that imported torch, which must be able to use the device.
5. Prints one table, then the device row (NVML identity), and exits 1 if any check failed.

Needs torch, pyarrow, click, pyyaml (and nvidia-ml-py for NVML facts); not Ray, not DuckDB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the stepscope package of this checkout (src/stepscope links to the folders)

TOLERANCE = 0.05
GPU_TEST_FILES = ("test_device.py", "test_peaks.py", "test_runner.py", "test_losses.py")  # where the `gpu` tests are
NEEDED = {"torch": "torch", "pyarrow": "pyarrow", "click": "click", "yaml": "pyyaml"}


def missing_modules() -> list[str]:
    """What to pip install before anything runs (nvidia-ml-py is optional: NVML facts)."""
    import importlib.util

    return [pkg for module, pkg in NEEDED.items() if importlib.util.find_spec(module) is None]

def specs(device: str, quick: bool) -> dict[str, str]:
    """Spec files by name: one per workload (their size parameters differ)."""
    iterations, warmup = (6, 2) if quick else (30, 5)
    sizes = {
        "mlp": "depth: 4, width: 2048, input_dim: 1024, batch_size: 512",
        "resnet": "depth: 18, image_size: 128, num_classes: 100, batch_size: 64",
        "gpt": "n_layer: 6, n_head: 8, d_model: 512, seq_len: 512, vocab_size: 8192, batch_size: 8",
    }
    if quick:
        sizes = {"mlp": "depth: 2, width: 512, input_dim: 512, batch_size: 128"}
    out = {}
    for workload, size in sizes.items():
        out[f"gpu-check-{workload}.yaml"] = textwrap.dedent(f"""\
            name: gpu-check-{workload}
            fixed: {{workload: {workload}, iterations: {iterations}, warmup: {warmup}, optimizer: adam,
                    device: {device}, {size}}}
            grid:
              precision: [fp32, tf32, amp_bf16]
            """)
    return out


def run_gpu_tests() -> tuple[bool, str]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return False, "gpu tests: not run: pytest is not installed here (pip install pytest)"
    # Only the modules that hold gpu tests: the rest need Ray, DuckDB or moto to be collected.
    files = [str(ROOT / "tests" / "workloads" / f) for f in GPU_TEST_FILES]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT, capture_output=True, text=True,
    )
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
    # 5: nothing collected, which here means no test is marked gpu: a failure of this check.
    return proc.returncode == 0, f"gpu tests: {tail[0]} (pytest exit {proc.returncode})"


def run_trials(workdir: Path, store: Path, device: str, quick: bool) -> list[str]:
    failures = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    for name, text in specs(device, quick).items():
        path = workdir / name
        path.write_text(text)
        for index in range(3):
            proc = subprocess.run(
                [sys.executable, "-m", "stepscope", "trial", str(path), "--index", str(index),
                 "--store", str(store)],
                cwd=workdir, env=env, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                failures.append(f"{name} trial {index}: exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-500:]}")
    return failures


def fork_server_check(workdir: Path, device: str, quick: bool) -> tuple[str, list[str]]:
    """Two trials through the fork server: distinct fresh processes, both on `device`."""
    from stepscope.orchestrator import forkserver
    from stepscope.orchestrator.grid import expand
    from stepscope.orchestrator.scheduler import PRELOAD
    from stepscope.orchestrator.spec import load_spec
    from stepscope.workloads.measure.runner import run_trial

    name, text = next(iter(specs(device, quick).items()))
    path = workdir / f"fork-{name}"
    path.write_text(text)
    trial = expand(load_spec(str(path)), None)[0]
    rows = [forkserver.call_in_fresh_process(PRELOAD, run_trial, trial, "fork-check", None) for _ in range(2)]
    pids = [r["pid"] for r in rows]
    failures = [f"fork server: {r['status']}: {r['error']}" for r in rows if r["status"] != "ok"]
    failures += [f"fork server: ran on {r['device_kind']}, not {device}" for r in rows
                 if r["status"] == "ok" and r["device_kind"] != device]
    if len(set(pids)) != 2 or os.getpid() in pids:
        failures.append(f"fork server: trials did not run in fresh processes (pids {pids})")
    line = (f"fork server: {trial.label} twice, pids {pids[0]} and {pids[1]}, on "
            f"{', '.join(sorted({str(r['device_name']) for r in rows}))}: "
            + ("ok" if not failures else "FAIL"))
    return line, failures


def read_table(store: Path, table: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((store / table).glob("sweep_id=*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def check(store: Path, device: str) -> tuple[list[list], list[str]]:
    trials = read_table(store, "trials")
    steps = read_table(store, "steps")
    table, failures = [], []
    for t in sorted(trials, key=lambda r: (r["workload"], r["precision"])):
        label = f"{t['workload']} {t['precision']}"
        if t["status"] != "ok":
            failures.append(f"{label}: {t['status']}: {t['error']}")
            continue
        measured = [s for s in steps if s["trial_id"] == t["trial_id"] and not s["is_warmup"]]
        n = t["measured_steps"]
        phases_ms = sum(s["duration_ms"] for s in measured) / n
        gaps = [s["gpu_gap_ms"] for s in measured if s["gpu_gap_ms"] is not None]
        gap_ms = sum(gaps) / n if gaps else None
        host_step_ms = t["measured_wall_s"] * 1e3 / n
        # The device's timeline of a step: its phases and the idle gaps between them
        # (on a CPU there are no gaps: the host's clock is the device's).
        device_step_ms = phases_ms + (gap_ms or 0.0)
        step_err = abs(device_step_ms - host_step_ms) / host_step_ms
        N = t["param_count"]
        memory_ok = (t["param_bytes"], t["grad_bytes"], t["optimizer_state_bytes"]) == (4 * N, 4 * N, 8 * N)
        mfus = {"measured": t["mfu_measured"]}
        if device != "cpu":
            mfus["datasheet"] = t["mfu_datasheet"]
        mfu_ok = all(m is not None and 0 < m <= 1 for m in mfus.values())
        if step_err > TOLERANCE:
            failures.append(f"{label}: phases + gaps {device_step_ms:.3f} ms vs synchronised step {host_step_ms:.3f} ms "
                            f"({100 * step_err:.1f}% > {100 * TOLERANCE:.0f}%)")
        if not memory_ok:
            failures.append(f"{label}: memory bytes param/grad/adam {t['param_bytes']}/{t['grad_bytes']}/"
                            f"{t['optimizer_state_bytes']} are not 4N/4N/8N for N={N}")
        if not mfu_ok:
            failures.append(f"{label}: MFU {mfus} not in (0, 1] ({t['flops_error'] or 'no FLOPs error'})")
        peak_alloc = max((s["peak_allocated_bytes"] or 0) for s in measured) or None
        table.append([
            t["workload"], t["precision"], t["batch_size"], f"{N / 1e6:.2f}M",
            f"{host_step_ms:.3f}", f"{phases_ms:.3f}",
            "-" if gap_ms is None else f"{gap_ms:.3f}", f"{100 * step_err:.2f}%",
            "exact" if memory_ok else "WRONG",
            f"{t['activation_bytes'] / 2**20:.1f}" if t["activation_bytes"] is not None else "-",
            f"{peak_alloc / 2**20:.0f}" if peak_alloc else "-",
            "-" if t["non_torch_bytes"] is None else f"{t['non_torch_bytes'] / 2**20:.0f}",
            "-" if t["achieved_tflops"] is None else f"{t['achieved_tflops']:.2f}",
            _fmt(t["mfu_datasheet"]), _fmt(t["mfu_measured"]),
            "ok" if step_err <= TOLERANCE and memory_ok and mfu_ok else "FAIL",
        ])
    if not trials:
        failures.append("no trial rows were written")
    return table, failures


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


HEADER = ["workload", "precision", "batch", "params", "sync_step_ms", "phases_ms", "gaps_ms", "diff",
          "param/grad/adam", "act_MiB", "peak_alloc_MiB", "non_torch_MiB", "TFLOP/s", "mfu_sheet",
          "mfu_meas", "check"]


def render(rows: list[list]) -> str:
    cells = [HEADER] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or the CPU twin")
    ap.add_argument("--quick", action="store_true", help="one small workload, few steps")
    ap.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    ap.add_argument("--keep", metavar="DIR", help="keep the store in DIR (default: a temporary directory)")
    args = ap.parse_args(argv)

    missing = missing_modules()
    if missing:
        print(f"gpu check: missing {', '.join(missing)}: pip install {' '.join(missing)}")
        return 2
    failures = []
    if not args.no_tests:
        ok, line = run_gpu_tests()
        print(line, flush=True)
        if not ok:
            failures.append(line)
    with tempfile.TemporaryDirectory(prefix="stepscope-gpu-check-") as tmp:
        workdir = Path(tmp)
        store = Path(args.keep).resolve() if args.keep else workdir / "store"
        failures += run_trials(workdir, store, args.device, args.quick)
        rows, more = check(store, args.device)
        failures += more
        print(render(rows))
        line, more = fork_server_check(workdir, args.device, args.quick)
        failures += more
        print(line)
        for dev in {d["device_uuid"]: d for d in read_table(store, "devices")}.values():
            keys = ("device_uuid", "device_name", "gpu_variant", "device_memory_bytes", "sm_count",
                    "compute_capability", "sm_clock_mhz", "sm_clock_max_mhz", "power_limit_w", "ecc_enabled",
                    "mig_enabled", "driver_version", "cuda_driver_version", "cuda_version", "torch_version")
            print("device: " + ", ".join(f"{k}={dev[k]}" for k in keys if dev.get(k) is not None))
    for line in failures:
        print(f"FAIL {line}")
    print("gpu check: " + ("passed" if not failures else f"{len(failures)} failure(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
