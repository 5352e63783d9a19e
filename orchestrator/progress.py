"""What `stepscope run` prints while a sweep runs: a line per finished trial, and on a
terminal a live bar with the ETA and what runs where. The scheduler calls it (its
`progress=`); it only prints."""

from __future__ import annotations

import sys
import time

import click

from stepscope.orchestrator.spec import SweepSpec


class PrintProgress:
    """Trial lines as they finish; on a terminal also a live bar with ETA and what runs where."""

    LABEL_MIN, LABEL_MAX = 28, 72  # columns for a trial's label: aligned, and a long one kept on one line

    def __init__(self, spec: SweepSpec, trials=()) -> None:
        # Grid keys beyond the usual three say which trial this is (e.g. a custom workload's).
        self.extra = [k for k, _ in spec.grid if k not in ("workload", "batch_size", "precision")]
        # As wide as the sweep's longest label (long GPU types: `on A100-SXM4-80GB`), so the
        # figures stay in one column; a label that comes later and is longer widens it.
        self.label_width = min(self.LABEL_MAX, max([self.LABEL_MIN, *(len(self.label(t)) for t in trials)]))
        self.tty = sys.stderr.isatty()
        self.bar_shown = False
        self.last_tick = 0.0

    def started(self, sweep_id: str, total: int, skipped: int, cluster: str) -> None:
        stored = f", {skipped} already stored" if skipped else ""
        click.echo(f"sweep {sweep_id}: {total} trial{'s' if total != 1 else ''}{stored}; {cluster}", err=True)

    def trial_done(self, o, snap) -> None:
        width = len(str(snap.total))
        if o.status == "ok" and o.samples_per_s:
            what = f"{o.samples_per_s:>10,.1f} samples/s"
        else:
            what = (o.error or "")[:100]
        eta = f"  ETA {duration(snap.eta_s)}" if snap.eta_s and snap.done < snap.total else ""
        label = self.label(o.trial)
        self.label_width = max(self.label_width, min(len(label), self.LABEL_MAX))
        self._clear()
        click.echo(
            f"[{snap.done:>{width}}/{snap.total}] {o.status:<9} {label:<{self.label_width}} {what}  ({o.seconds:.1f}s){eta}",
            err=True,
        )
        self.tick(snap, force=True)

    def tick(self, snap, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self.last_tick < 0.5):
            return
        self.last_tick = now
        filled = int(20 * snap.done / max(snap.total, 1))
        # Between one trial's end and the next one's start nothing runs for a moment: that is
        # "starting", not "none", while trials are left.
        running = ", ".join(f"{k} {v}" for k, v in sorted(snap.running.items())) or (
            "none" if snap.done >= snap.total else "starting")
        eta = duration(snap.eta_s) if snap.eta_s is not None else "?"
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {snap.done}/{snap.total} "
            f"{100 * snap.done // max(snap.total, 1)}%  elapsed {duration(snap.elapsed_s)}  ETA {eta}  "
            f"running: {running}  failures: {snap.failures}"
        )
        click.echo(f"\r\033[K{line}", err=True, nl=False)
        self.bar_shown = True

    def retrying(self, trial, attempt: int, reason: str) -> None:
        self._clear()
        click.echo(f"  retrying {self.label(trial)} (attempt {attempt}): {reason}", err=True)

    def label(self, trial) -> str:
        return " ".join([trial.label, *(f"{k}={trial.params[k]}" for k in self.extra)])

    def finished(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.bar_shown:
            click.echo("\r\033[K", err=True, nl=False)
            self.bar_shown = False


def duration(seconds: float | None) -> str:
    """A short duration: 42s, 3m07s, 2h05m; "?" when unknown."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
