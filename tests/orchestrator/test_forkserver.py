"""The fork server where `pidfd_open` is refused (an old kernel, a container's seccomp
profile) or missing: it polls `waitpid` instead, and still returns every child's result
and reports every child that dies.

The refusal is real, in the server process: the test writes a module that the server
preloads (as it preloads torch) before it forks anything; it replaces `os.pidfd_open`
with one that raises what a kernel without the call (ENOSYS) or a seccomp profile (EPERM)
gives, and logs the pid it was asked for, so the test knows the refused call was made.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from stepscope.orchestrator.forkserver import ChildDied, ForkServer

pytestmark = pytest.mark.slow  # starts a server process per test

PRELOAD = """\
import errno, os

def _refused(pid, flags=0):
    with open({log!r}, "a") as f:
        f.write(f"{{pid}}\\n")
    raise {error}(errno.{name}, os.strerror(errno.{name}))

if {name!r} == "MISSING":
    del os.pidfd_open  # Python without it (not Linux)
else:
    os.pidfd_open = _refused
"""
REFUSALS = {"ENOSYS": "OSError", "EPERM": "PermissionError", "MISSING": None}
HANG_S = 60  # a guard against a hang, not a speed check


@pytest.fixture(params=list(REFUSALS))
def refused(request, tmp_path, monkeypatch):
    """(a ForkServer whose os.pidfd_open is refused or missing, the refusal's log)."""
    name = request.param
    log = tmp_path / "pidfd_open.log"
    module = f"refuse_pidfd_{name.lower()}"
    (tmp_path / f"{module}.py").write_text(PRELOAD.format(log=str(log), error=REFUSALS[name], name=name))
    monkeypatch.syspath_prepend(str(tmp_path))  # the server takes this process's sys.path
    server = ForkServer([module])
    yield server, log, name
    server.close()


def call(server: ForkServer, fn, *args):
    """server.call(fn, *args), failing the test (not hanging it) if no answer comes."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = server.call(fn, *args)
        except BaseException as exc:  # handed to the test's thread
            out["raised"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        server.close()  # the server kills the child and exits: the thread ends
        pytest.fail(f"no answer from the fork server in {HANG_S} s")
    if "raised" in out:
        raise out["raised"]
    return out["value"]


def calls_logged(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_results_come_back_without_a_pidfd(refused):
    server, log, name = refused
    pids = [call(server, os.getpid) for _ in range(3)]
    assert len(set(pids)) == 3 and os.getpid() not in pids and server.proc.pid not in pids
    # Each child's pid was asked for once, and refused: the polling path answered all three.
    assert calls_logged(log) == (pids if name != "MISSING" else [])
    with pytest.raises(ValueError, match="invalid literal"):
        call(server, int, "not a number")  # the child's exception, re-raised here
    assert server.alive


@pytest.mark.parametrize(("fn", "args", "said"), [
    (os._exit, (3,), "exited with code 3 before returning a result"),
    (signal.raise_signal, (signal.SIGKILL,), "was killed by SIGKILL"),
])
def test_a_child_that_dies_is_reported_without_a_pidfd(refused, fn, args, said):
    server, log, name = refused
    with pytest.raises(ChildDied, match=said):
        call(server, fn, *args)
    assert len(calls_logged(log)) == (1 if name != "MISSING" else 0)
    assert call(server, os.getpid) != server.proc.pid  # the server serves on


def exit_leaving_a_grandchild(pid_file: str) -> None:
    """In the trial's process: fork a grandchild that keeps the reply pipe open (so its
    EOF never comes) and sleeps; then exit without a result."""
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(HANG_S * 2)
        os._exit(0)
    Path(pid_file).write_text(str(grandchild))
    os._exit(4)


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie no one reaped counts: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_child_whose_pipe_stays_open_is_seen_by_polling_and_its_group_killed(refused, tmp_path):
    """Only waitpid can tell that this child ended: its pipe has another writer."""
    server, log, name = refused
    pid_file = tmp_path / "grandchild"
    with pytest.raises(ChildDied, match="exited with code 4"):
        call(server, exit_leaving_a_grandchild, str(pid_file))
    grandchild = int(pid_file.read_text())
    for _ in range(HANG_S * 10):  # SIGKILL was sent before the reply; its delivery is not instant
        if gone(grandchild):
            break
        time.sleep(0.1)
    assert gone(grandchild), "the trial's process group outlived it"
    assert len(calls_logged(log)) == (1 if name != "MISSING" else 0)
