"""A fork server: run a function in a fresh process, with torch already imported.

`isolation: process` wants every trial in an OS process that never ran another
trial. Starting one (Python, `import torch`) costs a second or more; forking one
costs milliseconds. So each Ray worker keeps one server process that imports the
heavy modules once and then only forks: it never runs a trial, never initialises
CUDA and never starts torch's thread pools, so each child starts as clean as a new
process, minus the imports.

Lifetimes (Linux):

- The server reads requests from a pipe that only its client (the Ray worker)
  writes to. EOF on it means the client is gone (it exited, or was killed: kill -9,
  `ray.cancel(force=True)`): the server kills the running child with SIGKILL and
  exits, so a cancelled trial writes nothing after its worker died.
- A child asks for SIGKILL when the server dies (`PR_SET_PDEATHSIG`; the server
  forks from its main thread, which lives as long as the server does).
- A child is a process group of its own, killed when the child ends: nothing the
  trial started outlives it.
- A child that ends without a result (killed by a signal, a segfault, `os._exit`)
  makes `call` raise `ChildDied`; so does a server that died.
- The server learns of a child's exit from a pidfd (`os.pidfd_open`, Linux 5.3+); where
  the call is missing or refused (an old kernel, a container's seccomp profile), it
  polls `waitpid` every 50 ms instead. A refused `prctl` or `setpgid` is tolerated too.

Per call the child takes the client's current environment (Ray sets
CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS per task; CUDA reads the former only when
the child first uses it), `sys.path` and working directory, and sets torch's thread
count from OMP_NUM_THREADS as a new process would. This module imports neither Ray
nor torch; only the server imports what it is asked to preload.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

_HEADER = struct.Struct(">Q")  # each message: its length, then a pickle
#: Set per task by Ray in its worker: the server starts without them, so that
#: only the child's own copy (the task's values) can reach torch.
PER_CALL_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
_PR_SET_PDEATHSIG = 1
#: How often the server checks on a child when it has no pidfd to wait on (`_open_pidfd`):
#: a child's exit is seen at most this late.
_POLL_S = 0.05


class ChildDied(RuntimeError):
    """The child (or the server) ended without returning a result."""


class ForkServer:
    """A server process that has imported `preload`; `call` forks a child per call."""

    def __init__(self, preload: Sequence[str]) -> None:
        self.preload = tuple(preload)
        req_r, self._req = os.pipe()  # client -> server; non-inheritable on this side
        self._res, res_w = os.pipe()  # server -> client
        env = {k: v for k, v in os.environ.items() if k not in PER_CALL_ENV}
        # Should anything the server imports ask torch.cuda.is_available(), answer from
        # NVML instead of initialising the CUDA driver, which no forked child could use.
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from stepscope.orchestrator.forkserver import _serve; _serve({req_r}, {res_w})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(req_r, res_w), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(self._req)
            os.close(self._res)
            raise
        finally:
            os.close(req_r)
            os.close(res_w)
        try:
            _send(self._req, {"sys_path": list(sys.path), "preload": self.preload})
            if _recv(self._res) is None:
                raise ChildDied(f"the fork server exited while importing {', '.join(self.preload)}")
        except BaseException:
            self.close()
            raise

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) in a new child process; its value, or its exception re-raised."""
        call = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)  # opened once the child is set up
        request = {"call": call, "env": dict(os.environ), "sys_path": list(sys.path), "cwd": os.getcwd()}
        try:
            _send(self._req, request)
            data = _recv_bytes(self._res)
        except BrokenPipeError:
            data = None
        except BaseException:  # interrupted while the child runs: take it down with the server
            self.close()
            raise
        if data is None:
            self.close()
            raise ChildDied("the fork server died, and the trial's process with it")
        try:
            reply = pickle.loads(data)
        except Exception as exc:  # e.g. an exception class this process cannot import
            raise RuntimeError(f"cannot read the result of the trial's process: {type(exc).__name__}: {exc}") from None
        if "died" in reply:
            raise ChildDied(f"the trial's process (pid {reply['pid']}) {reply['died']}")
        if "raised" in reply:
            raise reply["raised"]
        return reply["value"]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self._req >= 0

    def close(self) -> None:
        """Closing the pipe is the server's signal to kill its child and exit."""
        for fd in (self._req, self._res):
            if fd >= 0:
                os.close(fd)
        self._req = self._res = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_server: ForkServer | None = None  # one per client process, started on first use


def call_in_fresh_process(preload: Sequence[str], fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a fresh process forked from this process's server."""
    global _server
    if _server is None or not _server.alive or _server.preload != tuple(preload):
        if _server is not None:
            _server.close()
        _server = ForkServer(preload)
    return _server.call(fn, *args, **kwargs)


# ---- the server process


def _serve(req_fd: int, res_fd: int) -> None:
    init = _recv(req_fd)
    if init is None:
        return
    sys.path[:] = init["sys_path"]
    for name in init["preload"]:
        try:
            importlib.import_module(name)
        except ImportError:  # as multiprocessing does: the child meets it again and reports it
            pass
    try:
        _send(res_fd, {"ready": os.getpid()})
        while True:
            # Unpickled by the child only: what it names (a custom module) is never imported here.
            request = _recv_bytes(req_fd)
            if request is None:  # the client is gone
                return
            _write_all(res_fd, _run_child(request, req_fd, res_fd))
    except BrokenPipeError:  # the client died as we answered
        return


def _run_child(request: bytes, req_fd: int, res_fd: int) -> bytes:
    """The child's reply, framed as it sent it, or one that says how it died."""
    server = os.getpid()
    out_r, out_w = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about forking with threads: ours hold no locks we use
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 70
        try:
            try:
                os.setpgid(0, 0)
            except OSError:  # refused (a seccomp profile): the server sets it too, or kills the child alone
                pass
            _die_with_parent(server)
            for fd in (req_fd, res_fd, out_r):
                os.close(fd)
            code = _child(request, out_w)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(out_w)
    try:
        os.setpgid(pid, pid)  # also here: the server may kill the group before the child set it
    except OSError:
        pass
    try:
        data, status = _wait(pid, out_r, req_fd)
    finally:
        os.close(out_r)
    if len(data) >= _HEADER.size and len(data) == _HEADER.size + _HEADER.unpack_from(data)[0]:
        return data
    return _frame({"died": _describe_status(status), "pid": pid})


def _wait(pid: int, out_r: int, req_fd: int) -> tuple[bytes, int]:
    """The child's reply and its wait status. If the client goes away meanwhile,
    kill the child (and its subprocesses) and exit. Woken by the child's exit through a
    pidfd where there is one, else by polling waitpid every `_POLL_S` seconds."""
    pidfd = _open_pidfd(pid)
    os.set_blocking(out_r, False)
    chunks: list[bytes] = []
    watch = [out_r, req_fd] + ([pidfd] if pidfd is not None else [])
    status = None
    try:
        while status is None:
            ready, _, _ = select.select(watch, [], [], None if pidfd is not None else _POLL_S)
            if req_fd in ready:  # EOF: the client died or was killed (never a new request while a child runs)
                _kill(pid)
                os._exit(0)
            if out_r in ready and not _drain(out_r, chunks):
                watch.remove(out_r)  # EOF; the child is exiting
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
    finally:
        if pidfd is not None:
            os.close(pidfd)
    try:  # what the trial started and left running (its group outlives it) goes with it
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    _drain(out_r, chunks)
    return b"".join(chunks), status


def _open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux >= 5.3), or None:
    where Python has no `os.pidfd_open` (not Linux), the kernel lacks the call (ENOSYS), or
    a container's seccomp profile refuses it (EPERM, the answer of a profile that does not
    list the call). The caller then polls."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError:  # ENOSYS, EPERM; also EMFILE: polling needs no descriptor
        return None


def _drain(fd: int, chunks: list[bytes]) -> bool:
    """Read what is there; False at EOF."""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        chunks.append(chunk)


def _kill(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} before returning a result"


def _die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the server dies. A refused prctl (it returns -1 and sets errno;
    ctypes raises nothing) leaves the child to the server's kill on the client's EOF."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(70)


# ---- the child process


def _child(raw: bytes, out_w: int) -> int:
    request = pickle.loads(raw)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = request["sys_path"]
    try:
        os.chdir(request["cwd"])
    except OSError:
        pass
    _like_a_new_process()
    try:
        fn, args, kwargs = pickle.loads(request["call"])
        reply = {"value": fn(*args, **kwargs)}
    except Exception as exc:
        reply = {"raised": exc}
    try:
        data = _frame(reply)
    except Exception as exc:  # an unpicklable value or exception
        what = reply.get("raised", exc)
        data = _frame({"raised": RuntimeError(f"{type(what).__name__}: {what}")})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _write_all(out_w, data)
    os.close(out_w)
    return 0


def _like_a_new_process() -> None:
    """What a new process would have differently from a fork of the server."""
    torch = sys.modules.get("torch")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))  # the server imported torch without it
    np_random = sys.modules.get("numpy.random")  # imported lazily: usually not by the server
    if np_random is not None:
        np_random.seed()  # a new process seeds numpy's global generator from the OS; a fork copies it


# ---- messages


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _send(fd: int, obj: Any) -> None:
    _write_all(fd, _frame(obj))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> Any:
    """The next message, or None at EOF."""
    body = _recv_bytes(fd)
    return None if body is None else pickle.loads(body)


def _recv_bytes(fd: int) -> bytes | None:
    head = _read_exactly(fd, _HEADER.size)
    if head is None:
        return None
    return _read_exactly(fd, _HEADER.unpack(head)[0])


def _read_exactly(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
