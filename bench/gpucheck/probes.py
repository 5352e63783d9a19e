"""Measurements that run inside a forked child (each takes the device name, returns plain
data), and the look at the fork server from outside (`inspect_process`, `server_verdict`).
"""

from __future__ import annotations

import os
import statistics
from time import perf_counter_ns
from typing import Any

# ---- in a child: the device-work calibration


def calibrate(device: str) -> dict[str, Any]:
    """How many `torch.cuda._sleep` cycles make a millisecond on this GPU, now.

    `_sleep(n)` spins for n SM clock cycles (`clock64()`), so cycles per ms is the SM
    clock in kHz: it is cross-checked against NVML's SM clock where NVML answers. The
    rate is the slope between n and 2n cycles (what one launch costs cancels), each
    timed with CUDA events, median of 5. A 50 ms spin first lets the clocks leave idle.
    On a CPU the "device work" is a busy loop on the host clock: `spin_error_ms` is
    how far a 5 ms spin overshoots.
    """
    import torch

    if device != "cuda":
        from gpucheck.sleepers import spin

        errors = []
        for _ in range(5):
            t0 = perf_counter_ns()
            spin(5.0)
            errors.append((perf_counter_ns() - t0) / 1e6 - 5.0)
        return {"device": device, "cycles_per_ms": 0.0, "spin_error_ms": statistics.median(errors)}
    torch.empty(1, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(cycles: int) -> float:
        # Each timing is read at once: elapsed_time needs the end event to have completed.
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    torch.cuda._sleep(1000)  # the kernel's first launch loads it (lazy loading): not timed
    torch.cuda.synchronize()
    rough = 1_000_000 / timed(1_000_000)  # cycles per ms, roughly, on cold clocks
    timed(int(50 * rough))  # 50 ms of spinning: clocks up from idle
    n = int(10 * rough)  # ~10 ms: event resolution (~0.5 us) is far below it
    one = statistics.median(timed(n) for _ in range(5))
    two = statistics.median(timed(2 * n) for _ in range(5))
    rate = n / (two - one)
    return {"device": device, "cycles_per_ms": rate, "launch_ms": 2 * one - two,
            "nvml_sm_clock_mhz": _nvml_sm_clock_mhz(torch)}


def _nvml_sm_clock_mhz(torch: Any) -> int | None:
    from stepscope.workloads.measure.device import torch_uuid
    from stepscope.workloads.measure.nvml import device_handle

    with device_handle(torch_uuid(torch.cuda.get_device_properties(torch.cuda.current_device()))) as found:
        if found is None:
            return None
        nvml, handle = found
        try:
            return int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        except Exception:
            return None


# ---- in a child: NVML's figure against a known allocation


def allocation(device: str, nbytes: int) -> dict[str, Any]:
    """Memory in use before, with and after a tensor of `nbytes` bytes.

    CUDA: NVML's figure (`stepscope.workloads.measure.memory.nvml_used_bytes`: this
    process, else the whole device, as its `scope` says) and torch's reserved pool,
    around `torch.empty(nbytes, uint8)` + synchronize, then `del` + `empty_cache()`.
    CPU: the process's resident set (`/proc/self/statm`) around a tensor whose pages are
    written (`fill_`), so they are resident.
    """
    import torch

    if device != "cuda":
        # First the same kind of allocation, smaller: whatever torch sets up on first use
        # (its thread pool's stacks, allocator state) is then in the "before" figure.
        warm = torch.empty(nbytes // 8, dtype=torch.uint8)
        warm.fill_(1)
        del warm
        rss = [_rss_bytes()]
        x = torch.empty(nbytes, dtype=torch.uint8)
        x.fill_(1)  # an untouched page is not resident
        rss.append(_rss_bytes())
        del x
        rss.append(_rss_bytes())
        return {"device": device, "used": rss, "reserved": None, "scope": "rss"}
    from stepscope.workloads.measure.device import torch_uuid
    from stepscope.workloads.measure.memory import nvml_used_bytes
    from stepscope.workloads.measure.nvml import device_handle, device_used_bytes

    dev = torch.device("cuda", torch.cuda.current_device())
    uuid = torch_uuid(torch.cuda.get_device_properties(dev))
    torch.empty(1, device=dev)
    torch.cuda.synchronize(dev)
    used, reserved, device_v2, scopes = [], [], [], []

    def sample() -> None:
        torch.cuda.synchronize(dev)  # the allocation (or the free) is done before NVML is asked
        value, scope = nvml_used_bytes(uuid)
        used.append(value)
        scopes.append(scope)
        reserved.append(torch.cuda.memory_reserved(dev))
        with device_handle(uuid) as found:
            device_v2.append(device_used_bytes(*found) if found is not None else None)

    sample()
    x = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    sample()
    del x
    torch.cuda.empty_cache()  # hand the block back to the driver: NVML must see it go
    sample()
    return {"device": device, "used": used, "reserved": reserved, "device_used_v2": device_v2,
            "scope": scopes[0] if len(set(scopes)) == 1 else ",".join(map(str, scopes))}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- in a child: what the runner's bookkeeping costs at a phase boundary


def bookkeeping(device: str, steps: int) -> dict[str, float]:
    """Host microseconds per phase boundary of the runner's own timer and memory peaks.

    Uses the runner's parts (`stepscope.workloads.measure.timing.make_timer` with
    `memory.PhaseMemoryPeaks.mark` as its `between`), N+1 boundaries a step for N phases,
    `steps` steps after 20 warm ones, nothing else in between. Timed around the marks
    only; the timer's end of step (where it reads the events that have completed) is
    outside. Also each part alone: the timer without `between`, and `PhaseMemoryPeaks.mark`.
    """
    import torch

    from stepscope.storage.schema import PHASES
    from stepscope.workloads.measure import memory
    from stepscope.workloads.measure.timing import make_timer

    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.empty(1, device=dev)
        torch.cuda.synchronize(dev)
    n, warm = len(PHASES), 20

    def per_boundary(mark, end_step, finish=lambda: None) -> float:
        total = 0
        for step in range(warm + steps):
            t0 = perf_counter_ns()
            for b in range(n + 1):
                mark(b)
            t1 = perf_counter_ns()
            end_step()
            if step >= warm:
                total += t1 - t0
        finish()
        return total / (steps * (n + 1)) / 1e3

    peaks = memory.PhaseMemoryPeaks(torch, dev, n)
    try:
        timer = make_timer(dev.type, n, torch, between=peaks.mark)
        both = per_boundary(timer.mark, *_step_ends(timer))
        alone = make_timer(dev.type, n, torch)
        timer_only = per_boundary(alone.mark, *_step_ends(alone))
        peaks_only = per_boundary(peaks.mark, peaks.read)
    finally:
        peaks.close()
    return {"timer_and_peaks_us": both, "timer_us": timer_only, "peaks_us": peaks_only}


def _step_ends(timer: Any) -> tuple:
    """What the runner calls after each step and after the loop: `end_step()` and
    `drain()` (a timer that reads its events without waiting), or the older `read()`,
    which waited for the step's last event."""
    if hasattr(timer, "end_step"):
        return timer.end_step, lambda: list(timer.drain())
    return timer.read, lambda: None


# ---- in a child: a CUDA user, and what it sees of its parent (the fork server)


def cuda_probe(device: str) -> dict[str, Any]:
    """Use the device from a forked child, then say who NVML lists as using it.

    Returns this child's pid, its parent's (the fork server), the pids NVML lists on
    the device (None without NVML or on a CPU) and what `/proc` shows of the parent.
    """
    out: dict[str, Any] = {"pid": os.getpid(), "ppid": os.getppid(), "nvml_pids": None}
    if device == "cuda":
        import torch

        from stepscope.workloads.measure.device import torch_uuid
        from stepscope.workloads.measure.nvml import device_handle

        x = torch.ones(1 << 20, device="cuda")  # a context and some memory: NVML lists this pid
        torch.cuda.synchronize()
        out["device_sum"] = float(x.sum().item())
        with device_handle(torch_uuid(torch.cuda.get_device_properties(torch.cuda.current_device()))) as found:
            if found is not None:
                nvml, handle = found
                pids: set[int] = set()
                for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                    try:
                        pids.update(int(p.pid) for p in getattr(nvml, getter)(handle))
                    except Exception:
                        pass
                out["nvml_pids"] = sorted(pids)
    out["parent"] = inspect_process(out["ppid"])
    return out


# ---- from outside: does a process hold the CUDA driver?


def inspect_process(pid: int) -> dict[str, Any]:
    """What /proc shows of `pid` that a CUDA context would leave.

    - `libcuda`: mapped files named libcuda.so*: the driver library. No CUDA context
      can exist in a process that never loaded it (cuInit lives there).
    - `uvm`: /dev/nvidia-uvm mapped or open: cuInit opens it (unified memory); NVML,
      which torch's NVML-based availability check uses, does not.
    - `nvidia_fds`: every open /dev/nvidia* (NVML opens /dev/nvidiactl and the device
      node too, so these alone prove nothing).
    """
    maps, fds = [], []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6:
                maps.append(parts[5].strip())
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    libcuda = sorted({m for m in maps if os.path.basename(m).startswith("libcuda.so")})
    nvidia_fds = sorted({f for f in fds if f.startswith("/dev/nvidia")})
    uvm = any(m.startswith("/dev/nvidia-uvm") for m in maps) or any(f.startswith("/dev/nvidia-uvm") for f in fds)
    return {"pid": pid, "libcuda": libcuda, "uvm": uvm, "nvidia_fds": nvidia_fds}


def server_verdict(server: dict[str, Any], child_pid: int | None, nvml_pids: list[int] | None) -> tuple[bool, str]:
    """(no CUDA context in the server, how that was shown), from `inspect_process` of the
    server and what NVML listed while a child of it used the device."""
    if not server["libcuda"]:
        return True, f"libcuda.so is not mapped in the server (pid {server['pid']}): it never loaded the CUDA driver"
    seen = nvml_pids is not None and child_pid in nvml_pids
    if seen and server["pid"] not in nvml_pids and not server["uvm"]:
        return True, (f"libcuda.so is mapped in the server (pid {server['pid']}) but it holds no context: NVML lists "
                      f"its child {child_pid} on the device and not the server, and /dev/nvidia-uvm is not open in it")
    why = [f"libcuda.so mapped ({', '.join(server['libcuda'])})"]
    if server["uvm"]:
        why.append("/dev/nvidia-uvm open or mapped (cuInit ran)")
    if nvml_pids is not None and server["pid"] in nvml_pids:
        why.append("NVML lists the server as a process on the device")
    if not seen:
        why.append("NVML cannot confirm (it does not list the child's pid: another pid namespace, or no NVML)")
    return False, f"server pid {server['pid']}: " + "; ".join(why)
