"""Shared machinery of the attack harness: run the real `stepscope` CLI in a bounded child
process, read back what it did, and hold the results.

Every child runs

- in its own session (process group), so a timeout or a leftover grandchild is killed
  with the whole group and nothing else;
- under an optional address-space limit (`RLIMIT_AS`, set by a tiny exec wrapper rather than
  `preexec_fn`, which is unsafe with the harness's worker threads);
- with stdout and stderr redirected to files, never pipes: a grandchild that inherits them
  cannot keep the harness waiting once the `stepscope` process itself has exited;
- with a clean environment: no `STEPSCOPE_STORE`, no `RAY_ADDRESS`, a private
  `STEPSCOPE_CACHE_DIR`, no byte-code written into the tree.

Its peak resident memory is `ru_maxrss` from `wait4`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

#: Exec wrapper: set RLIMIT_AS (bytes; 0 = none), then become the command.
_WRAP = (
    "import os,sys,resource as r\n"
    "m=int(sys.argv[1])\n"
    "m and r.setrlimit(r.RLIMIT_AS,(m,m))\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)

#: Bytes read back from a child's stdout and stderr (a huge result is not kept whole).
_READ_CAP = 4 << 20

_MEMORY_WORDS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "can't allocate memory",
                 "out of memory", "Out of Memory", "OutOfMemoryException")


@dataclass
class Proc:
    """What one child did."""

    args: list
    rc: int  # exit code; negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool  # we killed it at the timeout
    maxrss_mb: float  # peak resident memory of the child (ru_maxrss)

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    @property
    def unexpected(self) -> bool:
        """The CLI's own label for an uncaught exception (orchestrator/cli.py `_Group`)."""
        return self.rc == 1 and "Error: unexpected" in self.stderr

    @property
    def memory_death(self) -> bool:
        """Died of the memory limit: a signal (abort on bad_alloc, the kernel's kill) or
        a MemoryError-like message, whatever the exit code."""
        if self.timed_out:
            return False
        if self.rc in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGBUS):
            return True
        # A clean `Error:` line with exit 2 (DuckDB's own "Out of Memory Error") is a refusal.
        return self.rc != 0 and not self.clean_refusal and any(w in self.stderr for w in _MEMORY_WORDS)

    @property
    def clean_refusal(self) -> bool:
        """Exit 2 with an `Error:` line and no traceback (Click's own usage lines allowed)."""
        return self.rc == 2 and not self.traceback and "Error:" in self.stderr

    def first_err(self, width: int = 200) -> str:
        """The first non-blank stderr line; for a traceback, its last line too."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        if not lines:
            text = "(no stderr)"
        elif self.traceback:
            text = f"Traceback ... {lines[-1]}"
        else:
            # Click's usage errors open with `Usage:` lines; the message is the `Error:` line.
            text = next((ln for ln in lines if ln.startswith("Error")), lines[0])
        return text if len(text) <= width else text[: width - 3] + "..."

    def base_class(self) -> str | None:
        """The classes every category shares, or None when the run ended normally."""
        if self.timed_out:
            return "hang"
        if self.memory_death:
            return "killed for memory"
        if self.traceback:
            return "traceback"
        if self.unexpected:
            return "unexpected"
        if self.rc < 0:
            return f"crashed (signal {-self.rc})"
        return None


@dataclass
class Result:
    category: str
    name: str
    outcome: str
    detail: str = ""  # first line of stderr, or the harness's note
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Context:
    """What a category needs: the CLI, a private scratch directory, and its limits."""

    cli: Cli
    root: Path  # scratch directory of this category; removed afterwards
    jobs: int
    timeout: float  # seconds per child
    mem_limit: int  # bytes of address space per child (0: none)
    seed: int
    deadline: float  # time.monotonic() after which cases are skipped
    verbose: bool = False

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  {text}", file=sys.stderr, flush=True)

    def scratch(self, name: str) -> Path:
        """A fresh directory under this category's root."""
        path = Path(tempfile.mkdtemp(prefix=f"{_safe(name)[:40]}-", dir=self.root))
        return path


class Cli:
    """The `stepscope` entry point of this environment, run as a bounded child."""

    def __init__(self, exe: str, env_root: Path) -> None:
        self.exe = exe
        self.root = str(env_root)  # shown as <scratch> in stderr, to keep details short
        env = {k: v for k, v in os.environ.items()
               if k not in ("STEPSCOPE_STORE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "PYTHONPATH",
                            "STEPSCOPE_CACHE_DIR")}
        env["STEPSCOPE_CACHE_DIR"] = str(env_root / "cache")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PATH"] = f"{Path(exe).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("COLUMNS", None)
        self.env = env

    def start(self, args: Sequence, cwd: Path, mem_limit: int = 0, stdout=None, stderr=None,
              stdin=subprocess.DEVNULL, env: dict | None = None) -> subprocess.Popen:
        """Start `stepscope *args` in its own session; the caller waits (see `wait`)."""
        argv = [sys.executable, "-S", "-c", _WRAP, str(mem_limit), self.exe, *args]
        return subprocess.Popen(argv, cwd=cwd, env={**self.env, **(env or {})}, stdin=stdin, stdout=stdout,
                                stderr=stderr, start_new_session=True)

    def run(self, args: Sequence, cwd: Path, timeout: float, mem_limit: int = 0,
            keep_stdout: bool = True, env: dict | None = None) -> Proc:
        """Run `stepscope *args` to its end or the timeout; return what it did."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.monotonic()
            p = self.start(args, cwd, mem_limit, stdout=out if keep_stdout else subprocess.DEVNULL,
                           stderr=err, env=env)
            rc, timed_out, rss = wait(p, timeout)
            seconds = time.monotonic() - t0
            stderr = _read(err).replace(self.root, "<scratch>")
            return Proc(list(args), rc, _read(out) if keep_stdout else "", stderr, seconds, timed_out, rss)


def wait(p: subprocess.Popen, timeout: float) -> tuple[int, bool, float]:
    """Wait for `p` up to `timeout` seconds, killing its process group at the timeout, and
    then whatever of its group is left. Returns (exit code, timed out, peak RSS in MB)."""
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            kill_group(p.pid)
            pid, status, ru = os.wait4(p.pid, 0)
            timed_out = True
            break
        time.sleep(0.005)
    p.returncode = os.waitstatus_to_exitcode(status)
    kill_group(p.pid)  # leftovers: a thread's child, a forked helper
    return p.returncode, timed_out, ru.ru_maxrss / 1024


def kill_group(pgid: int) -> None:
    """SIGKILL the process group we created for one child (its id is the child's pid)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(f) -> str:
    f.seek(0)
    return f.read(_READ_CAP).decode("utf-8", "replace")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "case"


def pmap(ctx: Context, fn: Callable, items: Iterable, skipped: Callable[[object], Result]) -> list[Result]:
    """`fn(item)` for every item on `ctx.jobs` threads, in order; items not started before
    the category's deadline become `skipped(item)`."""
    items = list(items)
    done = [0]
    lock = threading.Lock()

    def one(item):
        if time.monotonic() > ctx.deadline:
            return skipped(item)
        try:
            r = fn(item)
        except Exception as exc:  # a harness bug must not hide the other results
            r = skipped(item)
            r.outcome, r.detail = "harness error", f"{type(exc).__name__}: {exc}"[:300]
        with lock:
            done[0] += 1
            ctx.log(f"[{done[0]}/{len(items)}] {r.name}: {r.outcome}")
        return r

    with ThreadPoolExecutor(max_workers=max(1, ctx.jobs)) as pool:
        return list(pool.map(one, items))


def find_cli(given: str | None) -> str:
    """The `stepscope` entry point: --stepscope, else the one beside this Python, else PATH."""
    if given:
        return given
    beside = Path(sys.executable).parent / "stepscope"
    if beside.exists():
        return str(beside)
    found = shutil.which("stepscope")
    if not found:
        raise SystemExit("attack: no `stepscope` entry point; activate the venv or give --stepscope")
    return found


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (symlinks not followed): relative path -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def make_writable(root: Path) -> None:
    """Undo chmods a case made, so the scratch directory can be removed."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if not os.path.islink(path):
                try:
                    os.chmod(path, 0o755)
                except OSError:
                    pass
