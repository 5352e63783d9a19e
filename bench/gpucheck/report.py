"""Result rows, the progress log and sections run under a time budget.

Every check ends as a `Row`: what was measured, what was expected, the tolerance and
PASS, FAIL, INFO (reported, not judged) or SKIP (cannot run on this device, said so).
A section that raises, or runs past its budget, becomes a FAIL row naming why; the
rows it produced before that are kept, and the next section runs.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

PASS, FAIL, INFO, SKIP = "PASS", "FAIL", "INFO", "SKIP"


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    check: str
    measured: str
    expected: str = ""
    tolerance: str = ""
    status: str = INFO
    note: str = ""


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def within(measured: float | None, expected: float, tolerance: float) -> bool:
    return measured is not None and abs(measured - expected) <= tolerance


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class Clock:
    """Seconds since the check started, on every progress line (a partial run still tells)."""

    def __init__(self) -> None:
        self.start = perf_counter()

    @property
    def elapsed(self) -> float:
        return perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed:7.1f}s] {message}", flush=True)


class SectionTimeout(Exception):
    """A section ran past its budget (raised by SIGALRM in the main thread)."""


def _alarm(signum, frame):
    raise SectionTimeout


def run_section(name: str, fn: Callable[[list[Row]], None], budget_s: float, clock: Clock) -> tuple[list[Row], float]:
    """fn(rows) with a SIGALRM after `budget_s` seconds; (its rows, seconds it took).

    The alarm interrupts a blocking wait too (a forked trial that hangs: the fork server's
    client closes the server on any exception, which kills the child)."""
    rows: list[Row] = []
    started = perf_counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(budget_s, 0.001))
    try:
        fn(rows)
    except SectionTimeout:
        rows.append(Row(name, "section", f"stopped after {perf_counter() - started:.0f} s", f"<= {budget_s:.0f} s",
                        status=FAIL, note="ran past its time budget; the rows above it are what it got to"))
    except Exception as exc:
        rows.append(Row(name, "section", "raised", "no error", status=FAIL, note=describe(exc)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = perf_counter() - started
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, INFO, SKIP)}
    clock.log(f"{name}: done in {seconds:.1f} s (budget {budget_s:.0f} s): "
              + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return rows, seconds


def describe(exc: BaseException) -> str:
    """`Type: message (at file:line)`, on one line, for a FAIL row."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:400] + where


def render(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table; columns in `right` are right-aligned (numbers)."""
    right = right if right is not None else set(range(len(header)))
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


FINAL_HEADER = ["section", "check", "measured", "expected", "tolerance", "result", "note"]


def render_final(rows: list[Row]) -> str:
    return render(FINAL_HEADER, [[r.section, r.check, r.measured, r.expected, r.tolerance, r.status, r.note]
                                 for r in rows], right={2, 3, 4})
