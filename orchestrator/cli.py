"""The `stepscope` command: a thin Click layer over the library.

Library code raises subclasses of `stepscope.errors.StepscopeError` (SpecError, StoreError,
QueryError, SchedulerError, ...); they become one `Error: ...` line and exit code 2 here, once.
Ray and torch are imported only by the commands that need them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import sys
import threading
import time
import traceback
import warnings

import click

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator.output import output_options, write_rows
from stepscope.orchestrator.spec import (
    SpecError,
    SweepSpec,
    check_gpu_label,
    check_sweep_id,
    load_spec,
    search_paths,
)
from stepscope.workloads.params import COMMON_PARAMS
from stepscope.workloads.registry import BUILTINS, find_custom_module, is_custom
from stepscope.workloads.storage.layout import StoreWarning
from stepscope.workloads.storage.schema import TrialStatus
from stepscope.workloads.storage.store import Store, StoreError, resolve_store

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Whoever read our output stopped (`stepscope sql ... | head -1`): exit quietly, with the
#: status a shell reports for a tool that SIGPIPE ended (128 + 13), as `yes | head -1` does.
EXIT_BROKEN_PIPE = 141

store_option = click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Results store: a directory or a URI (default: $STEPSCOPE_STORE, else ./stepscope-results).",
)


class _Group(click.Group):
    """Turns the user's errors (`StepscopeError`) into one line and exit code 2; anything
    else is a bug, reported as one line with exit code 1. Tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                warnings.simplefilter("always", StoreWarning)
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C: stopped by the user, as a shell reports it
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _stdout_to_devnull()
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # the one boundary where errors become messages
            if (ctx.obj or {}).get("debug"):
                traceback.print_exc()
            if isinstance(exc, StepscopeError):
                click.echo(f"Error: {one_line(exc, with_type=False)}", err=True)
                ctx.exit(EXIT_USAGE)
            click.echo(f"Error: unexpected {one_line(exc)} (rerun with --debug for a traceback)", err=True)
            ctx.exit(EXIT_TRIALS_FAILED)


def _stdout_to_devnull() -> None:
    """Nobody reads stdout any more: point it at /dev/null, so that what is still buffered
    (flushed at exit) raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor (a test's captured stdout)
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning is one `Warning: ...` line on stderr, as errors are."""
    click.echo(f"Warning: {one_line(message, with_type=False)}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="stepscope")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """stepscope: where the time and memory of a training step go.

    Write a sweep spec, run it on Ray, query the results with SQL.

    Example:

        stepscope run examples/quickstart.yaml
        stepscope query phase_shares
    """
    ctx.ensure_object(dict)["debug"] = debug


def main() -> None:
    cli(prog_name="stepscope")


def _keep_examples_verbatim(command: click.Command) -> None:
    """Click rewraps every paragraph of a help text, which runs the indented command lines of
    an `Example:` block together into one. A paragraph whose lines are all indented is code:
    mark it `\\b` (Click's "do not rewrap"), on every command and subcommand, once."""
    if command.help and not getattr(command, "_examples_verbatim", False):
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            "\b\n" + para if para.strip() and all(line.startswith("  ") for line in para.splitlines() if line) else para
            for para in paragraphs
        )
        command._examples_verbatim = True
    for sub in getattr(command, "commands", {}).values():
        _keep_examples_verbatim(sub)


# ---------------------------------------------------------------- plan


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
def plan(spec_path: str) -> None:
    """Validate SPEC and print the trials it expands to. Imports neither Ray nor torch.

    Example:

        stepscope plan examples/quickstart.yaml
    """
    from stepscope.orchestrator.grid import expand

    spec = load_spec(spec_path)
    trials = expand(spec)
    _check_custom_workloads(spec, trials)  # found on the filesystem, never imported
    varying = [k for k, _ in spec.grid]
    each = " per GPU type the cluster has when the sweep starts (gpus: each)" if spec.gpus_each else ""
    click.echo(f"{spec.name}: {len(trials)} trial{'s' if len(trials) != 1 else ''}{each} (isolation: {spec.isolation})")
    for t in trials:
        shown = " ".join(f"{k}={t.params[k]}" for k in varying)
        gpu = f" gpu={t.gpu}" if t.gpu else ""
        rep = f" repeat={t.repeat}" if spec.repeats > 1 else ""
        click.echo(f"{t.index:>4}  {t.trial_id}  {shown}{gpu}{rep}")


# ---------------------------------------------------------------- run


class _PrintProgress:
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
        eta = f"  ETA {_duration(snap.eta_s)}" if snap.eta_s and snap.done < snap.total else ""
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
        eta = _duration(snap.eta_s) if snap.eta_s is not None else "?"
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {snap.done}/{snap.total} "
            f"{100 * snap.done // max(snap.total, 1)}%  elapsed {_duration(snap.elapsed_s)}  ETA {eta}  "
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


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _check_custom_workloads(spec: SweepSpec, trials) -> None:
    for name in sorted({t.params["workload"] for t in trials if is_custom(t.params["workload"])}):
        if not find_custom_module(name, search_paths(spec)):
            raise SpecError(
                spec.source,
                "workload",
                f"cannot find module {name.partition(':')[0]!r} beside the spec, in the current "
                "directory or on PYTHONPATH",
            )


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@store_option
@click.option("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster).")
@click.option("--resume", is_flag=True, help="Continue the latest sweep of this spec in the store: run only trials not stored as ok or oom.")
@click.option("--sweep-id", default=None, callback=lambda _c, _p, v: check_sweep_id(v),
              help="Write into this sweep id (with --resume: continue it).")
@click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Cancel a trial that runs longer (worker start included) and store it as `timeout`.")
def run(spec_path: str, store: str | None, address: str | None, resume: bool, sweep_id: str | None,
        trial_timeout: float | None) -> None:
    """Run the sweep in SPEC on Ray and store every trial's rows.

    Exit code 0 when every trial ended with a result (ok or oom), 1 when some
    trial failed or timed out, 2 for a bad spec or option (nothing runs).

    Example:

        stepscope run examples/quickstart.yaml --store ./results
        stepscope run examples/quickstart.yaml --resume
    """
    from stepscope.orchestrator.grid import expand
    from stepscope.orchestrator.resume import pick_sweep
    from stepscope.orchestrator.scheduler import Session, plan_trials, run_sweep

    spec = load_spec(spec_path)
    _check_custom_workloads(spec, expand(spec))
    paths = search_paths(spec)  # before Ray starts: a Ray job's cwd is replaced under it
    st = Store(resolve_store(store))
    chosen = pick_sweep(st, spec, sweep_id=sweep_id, resume=resume)
    if resume and chosen.new:
        click.echo(f"nothing to resume for {spec.name} in {st.location}: starting sweep {chosen.sweep_id}", err=True)
    if st.local_root is not None:  # this host writes a local store too: find out before Ray starts
        _probe_local(st)
    resume_hint = _resume_hint(spec_path, store)
    try:
        with Session(address) as session:
            trials, _ = plan_trials(spec, session.nodes())
            outcome = run_sweep(
                session, spec, trials, st, sweep_id=chosen.sweep_id, done_ids=chosen.done_ids,
                progress=_PrintProgress(spec, trials), new_sweep=chosen.new, trial_timeout=trial_timeout, paths=paths,
            )
    except KeyboardInterrupt:
        outcome = None
    except StoreError as exc:  # the store stopped taking writes mid-sweep (full, removed, remounted)
        raise StoreError(f"{exc}; trials stored before this stay stored: fix the store, then resume with: "
                         f"{resume_hint}") from None
    if outcome is None or outcome.interrupted:
        stored = "finished trials are stored" if outcome is None else (
            f"{outcome.skipped + len(outcome.outcomes)} of {outcome.total} trials are stored"
        )
        click.echo(f"Interrupted: {stored}. Resume with: {resume_hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _summary(outcome, st)
    sys.exit(EXIT_OK if outcome.all_results else EXIT_TRIALS_FAILED)


def _probe_local(st: Store) -> None:
    """Can this host write the local store? StoreError when not. An existing store gets a
    probe file written and deleted; a store yet to be made is not made here (a run that
    stops before its first trial leaves no folder): its nearest existing parent must be a
    folder this process may write in."""
    import uuid

    from stepscope.workloads.storage.store import PROBE_DIR, probe_write

    root = st.local_root
    if os.path.isdir(root):
        probe_write(st, f"driver-{uuid.uuid4().hex[:12]}")
        with contextlib.suppress(OSError):  # other probes may be running
            os.rmdir(os.path.join(root, PROBE_DIR))
        return
    parent = root
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if os.path.islink(parent) and not os.path.exists(parent):
        raise StoreError(f"--store {st.location}: cannot write there: {parent} is a link to "
                         f"{os.readlink(parent)!r}, which does not exist")
    if not os.path.isdir(parent):
        raise StoreError(f"--store {st.location}: cannot write there: {parent} is a file, not a folder")
    probe = os.path.join(parent, f".stepscope-probe-{uuid.uuid4().hex[:12]}")
    try:  # a real folder made and removed: permissions alone do not tell (/proc, a read-only mount)
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise StoreError(f"--store {st.location}: cannot write there: cannot make a folder in {parent}: "
                         f"{exc.strerror or exc}") from None


def _warn_unused(workload: str, names: str) -> None:
    listed = ", ".join(repr(n) for n in names.split(","))
    click.echo(f"Warning: {workload} never read {listed} from its parameters; a typo in the spec? "
               "(trials.unused_params)", err=True)


def _summary(outcome, st: Store) -> None:
    statuses = tuple(TrialStatus)
    counts = ", ".join(f"{outcome.count(s)} {s}" for s in statuses if outcome.count(s))
    ran = len(outcome.outcomes)
    skipped = f"; {outcome.skipped} already stored" if outcome.skipped else ""
    click.echo(f"{outcome.sweep_id}: {ran} trial{'s' if ran != 1 else ''} run ({counts or 'none'}){skipped}")
    gpus = sorted({o.trial.gpu for o in outcome.outcomes if o.trial.gpu})
    for gpu in gpus:
        per = ", ".join(f"{outcome.count(s, gpu)} {s}" for s in statuses if outcome.count(s, gpu))
        click.echo(f"  {gpu}: {per}")
    for o in outcome.outcomes:
        if not o.status.is_result:
            click.echo(f"  {o.status}: {o.trial.label} [{o.trial.trial_id}]: {o.error}")
    unread = {(o.trial.params["workload"], o.unused_params) for o in outcome.outcomes if o.unused_params}
    for workload, names in sorted(unread):
        _warn_unused(workload, names)
    where = ("--store", st.location) if st.location != resolve_store(None) else ()
    if outcome.skipped or not outcome.outcomes or any(o.status.is_result for o in outcome.outcomes):
        click.echo(f"results in {st.location}; try: {_command('stepscope', 'query', 'phase_shares', *where)}")
    else:  # every trial failed: each one's row says why, and there is nothing else to query
        click.echo(f"no trial stored a result; see why with: {_command('stepscope', 'query', 'trials', *where)}")


# ---------------------------------------------------------------- submit / jobs


def _resume_hint(spec_path: str, store: str | None) -> str:
    """What resumes this sweep: `stepscope run SPEC --resume`; in a submitted job, whose
    spec is a copy in the job's working directory, the `stepscope submit ... --resume`
    that `stepscope submit` left in the job's environment for the user's own machine."""
    from stepscope.orchestrator.jobs import RESUME_COMMAND_ENV

    return os.environ.get(RESUME_COMMAND_ENV) or _command("stepscope", "run", spec_path, "--resume", *_store_args(store))


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--address", default=None, help="The cluster's job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS).")
@click.option("--store", default=None, metavar="URI", help="Where the job writes: an s3:// (or other) URI, or an absolute path on a shared mount (default: $STEPSCOPE_STORE).")
@click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Passed on to `stepscope run`.")
@click.option("--resume", is_flag=True, help="Passed on to `stepscope run`.")
@click.option("--wait", is_flag=True, help="Follow the job's output until it ends; exit 0 if it succeeded.")
def submit(spec_path: str, address: str | None, store: str | None, trial_timeout: float | None, resume: bool, wait: bool) -> None:
    """Submit the sweep in SPEC as a Ray job: its driver runs on the cluster.

    The spec and the custom workload modules it names travel with the job.

    Example:

        stepscope submit sweep.yaml --address http://head:8265 --store s3://bucket/results --wait
        stepscope jobs logs JOB_ID --address http://head:8265
    """
    from stepscope.orchestrator import jobs
    from stepscope.orchestrator.grid import expand

    spec = load_spec(spec_path)
    trials = expand(spec)
    _check_custom_workloads(spec, trials)
    location = store or os.environ.get("STEPSCOPE_STORE")
    if not location:
        raise StoreError("--store: a submitted sweep needs a store the cluster can reach, e.g. s3://bucket/prefix")
    job_id = jobs.submit(spec, trials, search_paths(spec), address=address, store=location,
                         trial_timeout=trial_timeout, resume=resume,
                         debug=click.get_current_context().find_root().obj.get("debug", False))
    click.echo(job_id)
    where = jobs.jobs_address(address)
    click.echo(f"submitted; follow it with: {_command('stepscope', 'jobs', 'logs', job_id, '--follow', '--address', where)}", err=True)
    if wait:
        sys.exit(_follow(jobs.client(address), job_id))


def _follow(jc, job_id: str) -> int:
    import asyncio
    import logging

    # Ray's job SDK logs an INFO line when the log stream closes; the status line below says it.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    async def tail() -> None:
        async for chunk in jc.tail_job_logs(job_id):
            click.echo(chunk, nl=False)

    asyncio.run(tail())
    status = str(jc.get_job_status(job_id)).rsplit(".", 1)[-1]
    click.echo(f"job {job_id}: {status}", err=True)
    return EXIT_OK if status == "SUCCEEDED" else EXIT_TRIALS_FAILED


@cli.group()
def jobs() -> None:
    """Follow and control sweeps submitted with `stepscope submit`.

    Example:

        stepscope jobs status raysubmit_XYZ --address http://head:8265
    """


_job_address = click.option("--address", default=None, help="The cluster's job server, e.g. http://HEAD:8265.")


@jobs.command("status")
@click.argument("job_id")
@_job_address
def jobs_status(job_id: str, address: str | None) -> None:
    """Print a submitted sweep's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).

    Example:

        stepscope jobs status raysubmit_XYZ --address http://head:8265
    """
    from stepscope.orchestrator import jobs as j

    info = _job_call(lambda: j.client(address).get_job_info(job_id), job_id)
    status = str(info.status).rsplit(".", 1)[-1]
    message = f": {info.message}" if info.message else ""
    click.echo(f"{job_id}: {status}{message}")


@jobs.command("logs")
@click.argument("job_id")
@_job_address
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print a submitted sweep's output.

    Example:

        stepscope jobs logs raysubmit_XYZ --follow --address http://head:8265
    """
    from stepscope.orchestrator import jobs as j

    jc = j.client(address)
    if follow:
        sys.exit(_job_call(lambda: _follow(jc, job_id), job_id))
    click.echo(_job_call(lambda: jc.get_job_logs(job_id), job_id), nl=False)


@jobs.command("stop")
@click.argument("job_id")
@_job_address
def jobs_stop(job_id: str, address: str | None) -> None:
    """Stop a submitted sweep; finished trials stay stored, and the `stepscope submit
    ... --resume` that continues it is printed.

    Example:

        stepscope jobs stop raysubmit_XYZ --address http://head:8265
    """
    from stepscope.orchestrator import jobs as j

    jc = j.client(address)
    info = _job_call(lambda: jc.get_job_info(job_id), job_id)
    stopped = _job_call(lambda: jc.stop_job(job_id), job_id)
    click.echo(f"{job_id}: {'stopping' if stopped else 'already ended'}")
    again = (info.metadata or {}).get(j.RESUME_METADATA_KEY)
    if stopped and again:  # a job that ended by itself has nothing to resume
        click.echo(f"trials finished so far stay stored; resume with: {again}", err=True)


def _job_call(fn, job_id: str):
    from stepscope.orchestrator.jobs import JobError

    try:
        return fn()
    except RuntimeError as exc:
        text = str(exc)
        if "does not exist" in text or "404" in text:
            raise JobError(f"no job {job_id!r} on this cluster") from None
        raise JobError(one_line(exc, with_type=False)) from None


# ---------------------------------------------------------------- trial


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--index", "index", type=int, required=True, help="Which trial (see `stepscope plan`).")
@store_option
@click.option("--sweep-id", default=None, callback=lambda _c, _p, v: check_sweep_id(v),
              help="Sweep to write into (default: the latest sweep of this spec in the store, else a new one).")
@click.option("--gpu", "gpu_type", default=None, metavar="TYPE",
              help="For `gpus: each`: the GPU type this trial stands for (as `run` would name it).")
def trial(spec_path: str, index: int, store: str | None, sweep_id: str | None, gpu_type: str | None) -> None:
    """Run trial N of SPEC in this process, without Ray; writes the same rows as `run`.

    Example:

        stepscope trial examples/quickstart.yaml --index 0
        stepscope trial each.yaml --index 3 --gpu H100-SXM-80GB
    """
    from stepscope.orchestrator.grid import expand
    from stepscope.orchestrator.resume import pick_sweep
    from stepscope.orchestrator.scheduler import sweep_row
    from stepscope.workloads.measure.runner import run_trial

    spec = load_spec(spec_path)
    check_gpu_label(gpu_type)
    if spec.gpus_each and not gpu_type:
        raise SpecError(spec.source, "gpus", "`each` is resolved by the cluster; give `stepscope trial --gpu TYPE`")
    if gpu_type and not spec.gpus_each:
        raise click.BadParameter("only for a spec with `gpus: each`; other specs name their types", param_hint="--gpu")
    trials = expand(spec, [gpu_type] if gpu_type else None)
    if not 0 <= index < len(trials):
        raise click.BadParameter(f"{index} is out of range; this spec has trials 0..{len(trials) - 1}", param_hint="--index")
    _check_custom_workloads(spec, trials[index : index + 1])
    st = Store(resolve_store(store))
    chosen = pick_sweep(st, spec, sweep_id=sweep_id, resume=True)
    if chosen.new:
        st.write_sweep(sweep_row(spec, chosen.sweep_id, len(trials), None))
    t = trials[index]
    click.echo(f"sweep {chosen.sweep_id}: trial {index} {t.label} [{t.trial_id}]", err=True)
    threads_before = set(threading.enumerate())
    row = run_trial(t, chosen.sweep_id, st, search_paths=search_paths(spec))
    if row["status"] == "ok":
        click.echo(f"ok: {row['samples_per_s']:,.1f} samples/s on {row['device_name']} ({row['device_kind']})")
    else:
        click.echo(f"{row['status']}: {row['error']}")
    if row["unused_params"]:
        _warn_unused(t.params["workload"], row["unused_params"])
    code = EXIT_OK if TrialStatus(row["status"]).is_result else EXIT_TRIALS_FAILED
    if any(th.is_alive() and not th.daemon for th in set(threading.enumerate()) - threads_before):
        # The rows are written; a thread the workload started and left running must not keep
        # this process alive (Python waits for non-daemon threads at exit), so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# ---------------------------------------------------------------- workloads


@cli.command()
@output_options
def workloads(fmt: str | None, max_rows: int | None) -> None:
    """List the built-in workloads and the parameters they take, with defaults.

    Parameters marked `common` apply to every workload, custom ones included.

    Example:

        stepscope workloads --format markdown
    """
    columns = ["workload", "parameter", "type", "default", "help"]
    rows = [["common", p.name, p.describe_type(), p.default, p.help] for p in COMMON_PARAMS]
    for info in BUILTINS.values():
        rows += [[info.name, p.name, p.describe_type(), p.default, p.help] for p in info.params]
    write_rows(columns, [rows], fmt, max_rows)


# ---------------------------------------------------------------- peaks

PEAK_COLUMNS = ["host", "device", "uuid", "precision", "torch", "conditions", "measured_at", "age_days", "state",
                "tflops", "min_tflops", "max_tflops", "spread_pct", "samples"]


@cli.command()
@click.option("--refresh", is_flag=True, help="Measure the peaks on this node again and show the new entries.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="With --refresh: the device to measure (default: cuda where torch sees one, else cpu).")
@click.option("--precision", "precisions", multiple=True, metavar="P",
              type=click.Choice(["fp32", "tf32", "bf16", "fp16", "amp_bf16", "amp_fp16"]),
              help="With --refresh: a precision to measure (repeatable; default: fp32, tf32, bf16, fp16).")
@click.option("--clear", is_flag=True, help="Empty the cache: the next trial measures its peak again.")
@output_options
def peaks(refresh: bool, device: str | None, precisions: tuple[str, ...], clear: bool, fmt: str | None,
          max_rows: int | None) -> None:
    """List the matmul peaks measured on this node (MFU's measured_* denominator).

    The cache is $STEPSCOPE_CACHE_DIR/matmul_peaks.json (default ~/.cache/stepscope).
    An entry is `fresh`, `expired` (older than $STEPSCOPE_PEAK_MAX_AGE_DAYS, default 7:
    measured again when next read) or `other_format` (never read). spread_pct is the
    kept batches' (max - min) / median.

    Example:

        stepscope peaks
        stepscope peaks --refresh --device cpu --precision fp32 --precision bf16
        stepscope peaks --clear
    """
    from stepscope.workloads.measure import peaks as pk
    from stepscope.workloads.measure.utilization import cache_dir

    if refresh and clear:
        raise click.UsageError("give --refresh or --clear, not both")
    if (device or precisions) and not refresh:
        raise click.UsageError("--device and --precision go with --refresh")
    folder = cache_dir()
    if clear:
        held = pk.clear_cache(folder)
        click.echo(f"Removed {held} measured peak{'s' if held != 1 else ''} from {folder}.")
        return
    if refresh:
        entries = [pk.CacheEntry(p.key, pk.CACHE_FORMAT, "fresh", p)
                   for p in pk.refresh_peaks(device, precisions or pk.MEASURABLE, folder)]
    else:
        entries = pk.cache_entries(folder)
    write_rows(PEAK_COLUMNS, [[_peak_row(e) for e in entries]], fmt, max_rows)


def _peak_row(entry) -> list:
    key, p = entry.key, entry.peak
    conditions = ", ".join(f"{k}={v}" for k, v in key.items()
                           if k not in ("host", "device", "uuid", "precision", "torch") and v is not None)
    measured = [p.measured_at, round(p.age_s / 86400, 3) if math.isfinite(p.age_s) else None] if p else [None, None]
    rates = ([round(p.tflops, 4), round(p.min_tflops, 4), round(p.max_tflops, 4), round(100 * p.spread, 1), p.samples]
             if p else [None] * 5)
    return [key.get("host"), key.get("device"), key.get("uuid"), key.get("precision"), key.get("torch"),
            conditions or None, *measured, entry.state, *rates]


# ---------------------------------------------------------------- query / sql


def _finite_timeout(ctx, param, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value}: give a number of seconds, or leave --timeout out for none")
    return value


timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    callback=_finite_timeout,
    help="Stop the query after this many seconds (default: none; Ctrl-C stops it too).")


@cli.command()
@click.option("--by", "by", required=True, metavar="AXIS",
              help="What to put side by side: a trials column (device_name, gpu_model, gpu, gpu_variant, precision, "
                   "batch_size, torch_version...), sweep, or a workload parameter.")
@click.option("--baseline", default=None, metavar="VALUE",
              help="The value the others are divided by (default: the first: the oldest sweep, the smallest "
                   "number, else alphabetically first). For --by sweep, a sweep id or a sweep's name.")
@click.option("--sweep", default="all", show_default=True, metavar="ID,...|latest|all",
              help="Trials of which sweeps: ids or names, comma-separated, or latest; a configuration's trials "
                   "in several sweeps pool as repeats. With --by sweep the --baseline sweep is always in "
                   "(--sweep latest: the newest sweep against the baseline).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Compare only these metrics (repeatable; default all): "
                   "step_ms, <phase>_ms, samples_per_s, mfu, peak_memory_bytes, energy_j_per_sample.")
@click.option("--min-effect", type=float, default=0.05, show_default=True, metavar="FRACTION",
              help="A ratio within this fraction either way is `same` (0.05 = 5%).")
@click.option("--fail-on", type=click.Choice(["slower", "faster", "changed"]), default=None,
              help="Exit 1 when a configuration's step_ms verdict (every --metric's, without step_ms) is this "
                   "(changed: any direction); slower and changed also fail on a configuration the baseline has "
                   "and a value lacks: a CI gate.")
@click.option("--show", type=click.Choice(["all", "rows", "summary", "environment", "gaps"]), default=None,
              help="Which tables to print (default: all; rows in csv, which holds one table).")
@store_option
@output_options
@timeout_option
@click.pass_context
def compare(ctx: click.Context, by: str, baseline: str | None, sweep: str, metrics: tuple[str, ...],
            min_effect: float, fail_on: str | None, show: str | None, store: str | None, fmt: str | None,
            max_rows: int | None, timeout: float | None) -> None:
    """Put the values of one axis side by side, per configuration: each metric's value, the
    ratio to the baseline, its 95% bootstrap interval, a Mann-Whitney test and a verdict
    (faster, slower, same within --min-effect, or unsure); then the geometric mean of the
    ratios per value, and what differs in the environment. The README's "Compare GPU models"
    gives the statistics and their sources.

    Example:

        stepscope compare --by device_name
        stepscope compare --by precision --baseline fp32 --metric step_ms --metric samples_per_s
        stepscope compare --by sweep --baseline nightly-old --fail-on slower
    """
    from stepscope.analysis.compare import ENVIRONMENT_COLUMNS, GAP_COLUMNS, SUMMARY_COLUMNS
    from stepscope.analysis.compare import compare as run_compare
    from stepscope.analysis.queries import watch
    from stepscope.analysis.warehouse import open_store

    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    show = show or ("rows" if fmt == "csv" else "all")
    if fmt == "csv" and show == "all":
        raise click.BadParameter("csv holds one table; choose --show rows, summary or environment", param_hint="--show")
    opened = open_store(resolve_store(store))
    _require_results(opened.contents, store)
    with watch(opened.con, timeout):
        result = run_compare(opened.con, by, baseline, sweep=sweep, min_effect=min_effect, metrics=metrics or None)
    tables = {
        "rows": (result.row_columns, result.rows),
        "summary": (list(SUMMARY_COLUMNS), result.summary),
        "environment": (list(ENVIRONMENT_COLUMNS), result.environment),
        "gaps": (list(GAP_COLUMNS), result.gaps),
    }
    if fmt == "json" and show == "all":
        import json

        from stepscope.orchestrator.output import _json

        document = {"axis": result.axis, "baseline": result.baseline, "values": result.values,
                    "min_effect": result.min_effect, **{name: rows for name, (_, rows) in tables.items()}}
        click.echo(json.dumps(_json(document), indent=2))
    elif show != "all":
        columns, rows = tables[show]
        write_rows(columns, [[[r.get(c) for c in columns] for r in rows]], fmt, max_rows)
    else:
        others = ", ".join(v for v in result.values if v != result.baseline)
        configs = len({tuple(r.get(c) for c in result.row_columns[:result.row_columns.index("metric")])
                       for r in result.rows})
        heading = "##" if fmt == "markdown" else ""
        click.echo(f"{heading} {result.axis}: {others} against the baseline {result.baseline} "
                   f"({configs} configuration(s); verdicts beyond {result.min_effect:.0%})".strip())
        # The heading names the baseline, and the value too when there is one other.
        hidden = {"baseline"} | ({"value"} if len(result.values) == 2 else set())
        columns = [c for c in result.row_columns if c not in hidden]
        write_rows(columns, [[[r.get(c) for c in columns] for r in result.rows]], fmt, max_rows)
        click.echo("")
        click.echo(f"{heading} summary: geometric mean of the ratios across configurations, with a 95% interval".strip())
        write_rows(list(SUMMARY_COLUMNS), [[[r.get(c) for c in SUMMARY_COLUMNS] for r in result.summary]], fmt, max_rows)
        click.echo("")
        if result.environment:
            click.echo(f"{heading} environment: what differs between the baseline's trials and each value's".strip())
            write_rows(list(ENVIRONMENT_COLUMNS), [[[r.get(c) for c in ENVIRONMENT_COLUMNS] for r in result.environment]],
                       fmt, max_rows)
        else:
            click.echo(f"{heading} environment: the same driver, CUDA, torch, stepscope and device on every side".strip())
        if result.gaps:
            click.echo("")
            click.echo(f"{heading} gaps: what the baseline has and a value lacks".strip())
            write_rows(list(GAP_COLUMNS), [[[r.get(c) for c in GAP_COLUMNS] for r in result.gaps]], fmt, max_rows)
    if result.gaps and show not in ("all", "gaps"):
        for gap in result.gaps:
            click.echo(f"Note: {result.axis} {gap['value']}: {gap['detail']}", err=True)
    if fail_on:
        failing = result.failing(fail_on)
        relation = {"slower": "slower than", "faster": "faster than", "changed": "changed from"}[fail_on]
        reasons = []
        if failing:
            reasons.append(f"{len(failing)} configuration(s) {relation} the baseline {result.baseline} beyond "
                           f"{result.min_effect:.0%} ({', '.join(result.gate_metrics)})")
        if fail_on != "faster" and result.gaps:
            reasons.append(f"{sum(g['missing_configs'] for g in result.gaps)} configuration(s) of the baseline "
                           f"missing ({', '.join(str(g['value']) for g in result.gaps)})")
        if reasons:
            click.echo(f"compare: {'; '.join(reasons)}: --fail-on {fail_on}", err=True)
            ctx.exit(EXIT_TRIALS_FAILED)


@cli.command()
@click.argument("name", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Query parameter (repeatable).")
@click.option("--list", "list_", is_flag=True, help="List the named queries with their descriptions.")
@store_option
@output_options
@timeout_option
def query(name: str | None, params: tuple[str, ...], list_: bool, store: str | None, fmt: str | None,
          max_rows: int | None, timeout: float | None) -> None:
    """Run the named query queries/NAME.sql against the store.

    Example:

        stepscope query --list
        stepscope query phase_breakdown -p sweep=all --format markdown
    """
    from stepscope.analysis.queries import bind, get_query, list_queries, stream_query, watch
    from stepscope.analysis.warehouse import open_store

    if list_:
        rows = [[q.name, q.description, ", ".join(f"{p.name}={p.default}" for p in q.parameters)] for q in list_queries()]
        write_rows(["query", "description", "parameters"], [rows], fmt, max_rows)
        return
    if not name:
        raise click.UsageError("give a query NAME, or --list to see them")
    bound = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="-p")
        bound[key] = value
    bind(get_query(name), bound)  # the query and its parameters are checked before the store is read
    opened = open_store(resolve_store(store))
    _require_results(opened.contents, store)  # a store with no sweep is not an empty answer
    con = opened.con
    with watch(con, timeout):
        result = stream_query(con, name, bound)
        write_rows(result.columns, result.batches, fmt, max_rows)


@cli.command()
@click.option("--out", "out_path", required=True, metavar="FILE.html",
              help="Where to write the report (replaced atomically if it exists).")
@store_option
@click.option("--sweep", default="all", show_default=True, metavar="ID|latest|all", help="Trials of which sweep(s).")
@click.option("--by", default=None, metavar="AXIS",
              help="The compare section's axis (default: gpu_model with 2+ models, else device_name, else precision).")
@click.option("--baseline", default=None, metavar="VALUE", help="The compare section's baseline value.")
def report(out_path: str, store: str | None, sweep: str, by: str | None, baseline: str | None) -> None:
    """Write one self-contained HTML report (plots as inline SVG, nothing fetched): the phases
    of the step per GPU model, throughput against batch size, MFU, memory against capacity,
    backward/forward, launch-bound configurations, the compare table, devices and specs.

    Example:

        stepscope report --out report.html
        stepscope report --out h100-vs-a100.html --by gpu_model --baseline A100 --sweep latest
    """
    from stepscope.analysis.report import check_out_path, write_report
    from stepscope.analysis.warehouse import open_store

    check_out_path(out_path)  # a bad --out is reported before the store is read
    opened = open_store(resolve_store(store))
    _require_results(opened.contents, store)
    info = write_report(opened.con, out_path, sweep=sweep, by=by, baseline=baseline, store=opened.contents.location)
    click.echo(f"{info.path}: {info.size_bytes:,} bytes ({info.size_bytes / 1024:,.0f} KiB)")


# SQL may open with a `--` comment, which Click would take for an option: an unknown
# option-like argument is the SQL text instead (a mistyped option then reads as SQL and
# gets the "no statement" message, or "unexpected extra argument").
@cli.command()
@store_option
@click.option("--sweep", default="all", show_default=True, metavar="ID|latest|all",
              help="Which sweep(s) to compact: a sweep id, the newest, or every sweep that needs it.")
@click.option("--dry-run", is_flag=True, help="Say which sweeps would be compacted; write and delete nothing.")
def compact(store: str | None, sweep: str, dry_run: bool) -> None:
    """Rewrite each sweep's per-trial files into one sorted file per table (trials, steps,
    devices) and store per-trial summaries, so queries over thousands of trials read a few
    files and comparisons a few rows per trial. The views read the same rows before and
    after; a trial rewritten later (a retry, a resumed run) is read from its new files.
    One line per sweep: trials, files before -> after, rows written, seconds. Run it while
    no sweep writes to the sweeps it compacts (a file rewritten meanwhile is kept, not lost).

    Example:

        stepscope compact
        stepscope compact --sweep latest --dry-run
    """
    from stepscope.analysis.compact import compact_sweep, plan_compaction

    st = Store(resolve_store(store))
    plan = plan_compaction(st, sweep)
    _require_results(plan.contents, store)
    for work in plan.sweeps:
        if dry_run:
            click.echo(f"{work.sweep_id}: {work.trials} trials, {work.files} files -> {work.files_after} "
                       f"(dry run: nothing written)")
            continue
        done = compact_sweep(st, work.sweep_id)
        kept = (f"; kept the loose files of {len(done.kept)} trial(s) rewritten while it ran: compact again later"
                if done.kept else "")
        click.echo(f"{done.sweep_id}: {done.trials} trials, {done.files_before} files -> {done.files_after}, "
                   f"{sum(done.rows.values()):,} rows, {done.seconds:.2f} s{kept}")
    if plan.settled:
        click.echo(f"{len(plan.settled)} sweep(s) with nothing to compact: {', '.join(plan.settled[:5])}"
                   + (", ..." if len(plan.settled) > 5 else ""))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("sql_text", metavar="SQL")
@store_option
@output_options
@timeout_option
def sql(sql_text: str, store: str | None, fmt: str | None, max_rows: int | None, timeout: float | None) -> None:
    """Run ad hoc SQL against the store's views (sweeps, trials, steps, ...).

    Example:

        stepscope sql "select workload, precision, median(samples_per_s) from trials group by all"
    """
    from stepscope.analysis.queries import reads_relations, stream_sql, watch
    from stepscope.analysis.warehouse import READY, open_store

    opened = open_store(resolve_store(store))
    con = opened.con
    with watch(con, timeout):
        result = stream_sql(con, sql_text)  # SQL DuckDB refuses is reported before the store is
        if opened.contents.state != READY and reads_relations(con, sql_text):
            _require_results(opened.contents, store)  # `select 1` needs no store; `from trials` does
        write_rows(result.columns, result.batches, fmt, max_rows)


def _require_results(contents, store: str | None) -> None:
    """EmptyStoreError unless the store holds a sweep; the message names the store as the user
    gave it (--store, STEPSCOPE_STORE, or the default) and the `run` that fills it."""
    if store is not None:
        named, args = f"--store {contents.location}", ("--store", store)
    elif os.environ.get("STEPSCOPE_STORE"):
        named, args = f"STEPSCOPE_STORE={contents.location}", ()
    else:
        named, args = f"{contents.location} (the default store: no --store, STEPSCOPE_STORE unset)", ()
    contents.require_results(named, _command("stepscope", "run", "SPEC", *args))


# ---------------------------------------------------------------- store


@cli.group("store")
def store_group() -> None:
    """Look after a results store: list what its readers skip, remove what killed writers left.

    Example:

        stepscope store check
        stepscope store clean --older-than 0
    """


@store_group.command("check")
@store_option
def store_check(store: str | None) -> None:
    """List the store's files per table: read, skipped (and why), and leftovers of killed writers.

    Exit code 0 when every file is read and nothing is left over, 1 otherwise.

    Example:

        stepscope store check --store ./stepscope-results
    """
    st = Store(resolve_store(store))
    report = _inspect(st)
    for listing in report.tables:
        compacted = f" ({len(listing.compacted)} compacted)" if listing.compacted else ""
        click.echo(f"{listing.table}: {len(listing.files) + len(listing.compacted)} file(s) read{compacted}, "
                   f"{len(listing.skipped)} skipped")
    for skipped in report.skipped:
        click.echo(f"  skipped {skipped}")
    now = time.time()
    for item in report.leftovers:
        age = f", {_duration(now - item.mtime)} old" if item.mtime is not None else ""
        click.echo(f"  leftover ({item.kind}{age}): {item.path}")
    if report.leftovers:
        click.echo(f"{len(report.leftovers)} leftover file(s) of killed writers; remove them with: "
                   f"{_command('stepscope', 'store', 'clean', *_store_args(store))}")
    if report.skipped:
        click.echo(f"{len(report.skipped)} file(s) skipped by every reader; stepscope did not write them "
                   f"as they are: move or delete them yourself")
    if not report.orphans_checked:
        click.echo("steps/devices files without a trials row are not looked for while a trials entry is "
                   "skipped (it may be their trial's): fix or move the skipped trials entries first")
    if report.skipped or report.leftovers:
        sys.exit(EXIT_TRIALS_FAILED)


@store_group.command("clean")
@store_option
@click.option("--older-than", "older_than", default="1h", show_default=True, metavar="AGE",
              help="Remove only leftovers older than this (e.g. 30s, 15m, 2h, 0): "
                   "a writer still running holds its files for seconds.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def store_clean(store: str | None, older_than: str, dry_run: bool) -> None:
    """Remove the leftovers of killed writers: temporary files, and steps/devices files
    whose trial never got its trials row. Files the readers skip are listed, never removed.

    Example:

        stepscope store clean --dry-run
    """
    age = _parse_age(older_than)
    cutoff = time.time() - age
    st = Store(resolve_store(store))
    report = _inspect(st)
    fs, _ = st.filesystem()
    removed = kept = 0
    for item in report.leftovers:
        # A file whose age the filesystem does not tell is kept, unless --older-than 0 asks for all.
        if (item.mtime is None and age > 0) or (item.mtime is not None and item.mtime > cutoff):
            kept += 1
            continue
        if not dry_run:
            try:
                fs.delete_file(item.path)
            except FileNotFoundError:
                continue  # its writer finished or another clean removed it
            except OSError as exc:
                raise StoreError(f"--store {st.location}: cannot remove {item.path}: {one_line(exc, with_type=False)}") from None
        click.echo(f"{'would remove' if dry_run else 'removed'} {item.kind}: {item.path}")
        removed += 1
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} leftover file(s); kept {kept} younger than {older_than}"
               + (f"; {len(report.skipped)} skipped file(s) left alone (see stepscope store check)" if report.skipped else ""))


def _inspect(st: Store):
    import pyarrow.fs as pafs

    from stepscope.workloads.storage.layout import TableUnreadable, inspect_store

    fs, root = st.filesystem()
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        raise StoreError(f"--store {st.location}: {one_line(exc, with_type=False)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StoreError(f"--store {st.location}: no store there (nothing was ever written to it); "
                         "give the store a sweep wrote to")
    if info.type != pafs.FileType.Directory:
        raise StoreError(f"--store {st.location}: is a file, not a directory; give a store directory or a URI")
    try:
        return inspect_store(fs, root)
    except TableUnreadable as exc:
        raise StoreError(f"--store {st.location}: {exc}") from None


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_age(text: str) -> float:
    value, unit = text.strip(), "s"
    if value and value[-1] in _AGE_UNITS:
        value, unit = value[:-1], value[-1]
    try:
        seconds = float(value) * _AGE_UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r}: write a number with s, m, h or d (e.g. 15m, or 0)", param_hint="--older-than") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise click.BadParameter(f"{text!r}: give an age of 0 or more", param_hint="--older-than")
    return seconds


def _store_args(store: str | None) -> tuple[str, ...]:
    return ("--store", store) if store else ()


def _command(*argv: str) -> str:
    """A command line the user can paste: every argument shell-quoted."""
    import shlex

    return shlex.join(argv)


_keep_examples_verbatim(cli)  # every command is defined by now


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
