"""Running sweeps: `plan` (the trials a spec expands to), `run` (on Ray), `trial` (one
trial in this process, without Ray) and `workloads` (what a spec may name)."""

from __future__ import annotations

import os
import sys
import threading

import click

from stepscope.orchestrator.commands.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRIALS_FAILED,
    command,
    store_args,
    warn_unused,
)
from stepscope.orchestrator.options import store_option
from stepscope.orchestrator.output import output_options, write_rows
from stepscope.orchestrator.spec import (
    SpecError,
    check_custom_workloads,
    check_gpu_label,
    check_sweep_id,
    load_spec,
    search_paths,
)
from stepscope.storage.schema import TrialStatus
from stepscope.storage.store import Store, StoreError, resolve_store


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
def plan(spec_path: str) -> None:
    """Validate SPEC and print the trials it expands to. Imports neither Ray nor torch.

    Example:

        stepscope plan examples/quickstart.yaml
    """
    from stepscope.orchestrator.grid import expand

    spec = load_spec(spec_path)
    trials = expand(spec)
    check_custom_workloads(spec, trials)  # found on the filesystem, never imported
    varying = [k for k, _ in spec.grid]
    each = " per GPU type the cluster has when the sweep starts (gpus: each)" if spec.gpus_each else ""
    click.echo(f"{spec.name}: {len(trials)} trial{'s' if len(trials) != 1 else ''}{each} (isolation: {spec.isolation})")
    for t in trials:
        shown = " ".join(f"{k}={t.params[k]}" for k in varying)
        gpu = f" gpu={t.gpu}" if t.gpu else ""
        rep = f" repeat={t.repeat}" if spec.repeats > 1 else ""
        click.echo(f"{t.index:>4}  {t.trial_id}  {shown}{gpu}{rep}")


@click.command()
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
    from stepscope.orchestrator.progress import PrintProgress
    from stepscope.orchestrator.resume import pick_sweep
    from stepscope.orchestrator.scheduler import Session, plan_trials, run_sweep
    from stepscope.orchestrator.store_admin import probe_local

    spec = load_spec(spec_path)
    check_custom_workloads(spec, expand(spec))
    paths = search_paths(spec)  # before Ray starts: a Ray job's cwd is replaced under it
    st = Store(resolve_store(store))
    chosen = pick_sweep(st, spec, sweep_id=sweep_id, resume=resume)
    if resume and chosen.new:
        click.echo(f"nothing to resume for {spec.name} in {st.location}: starting sweep {chosen.sweep_id}", err=True)
    if st.local_root is not None:  # this host writes a local store too: find out before Ray starts
        probe_local(st)
    again = resume_hint(spec_path, store)
    try:
        with Session(address) as session:
            trials, _ = plan_trials(spec, session.nodes())
            outcome = run_sweep(
                session, spec, trials, st, sweep_id=chosen.sweep_id, done_ids=chosen.done_ids,
                progress=PrintProgress(spec, trials), new_sweep=chosen.new, trial_timeout=trial_timeout, paths=paths,
            )
    except KeyboardInterrupt:
        outcome = None
    except StoreError as exc:  # the store stopped taking writes mid-sweep (full, removed, remounted)
        raise StoreError(exc, "; trials stored before this stay stored: fix the store, then resume with: ",
                         again) from None
    if outcome is None or outcome.interrupted:
        stored = "finished trials are stored" if outcome is None else (
            f"{outcome.skipped + len(outcome.outcomes)} of {outcome.total} trials are stored"
        )
        click.echo(f"Interrupted: {stored}. Resume with: {again}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    summary(outcome, st)
    sys.exit(EXIT_OK if outcome.all_results else EXIT_TRIALS_FAILED)


def summary(outcome, st: Store) -> None:
    """The lines a finished sweep ends with: counts per status (and per GPU type), each trial
    that stored no result and why, and the next command to try."""
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
        warn_unused(workload, names)
    where = ("--store", st.location) if st.location != resolve_store(None) else ()
    if outcome.skipped or not outcome.outcomes or any(o.status.is_result for o in outcome.outcomes):
        click.echo(f"results in {st.location}; try: {command('stepscope', 'query', 'phase_shares', *where)}")
    else:  # every trial failed: each one's row says why, and there is nothing else to query
        click.echo(f"no trial stored a result; see why with: {command('stepscope', 'query', 'trials', *where)}")


def resume_hint(spec_path: str, store: str | None) -> str:
    """What resumes this sweep: `stepscope run SPEC --resume`; in a submitted job, whose
    spec is a copy in the job's working directory, the `stepscope submit ... --resume`
    that `stepscope submit` left in the job's environment for the user's own machine."""
    from stepscope.orchestrator.jobs import RESUME_COMMAND_ENV

    return os.environ.get(RESUME_COMMAND_ENV) or command("stepscope", "run", spec_path, "--resume", *store_args(store))


@click.command()
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
    check_custom_workloads(spec, trials[index : index + 1])
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
        warn_unused(t.params["workload"], row["unused_params"])
    code = EXIT_OK if TrialStatus(row["status"]).is_result else EXIT_TRIALS_FAILED
    if any(th.is_alive() and not th.daemon for th in set(threading.enumerate()) - threads_before):
        # The rows are written; a thread the workload started and left running must not keep
        # this process alive (Python waits for non-daemon threads at exit), so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@click.command()
@output_options
def workloads(fmt: str | None, max_rows: int | None) -> None:
    """List the built-in workloads and the parameters they take, with defaults.

    Parameters marked `common` apply to every workload, custom ones included.

    Example:

        stepscope workloads --format markdown
    """
    from stepscope.workloads.params import COMMON_PARAMS
    from stepscope.workloads.registry import BUILTINS

    columns = ["workload", "parameter", "type", "default", "help"]
    rows = [["common", p.name, p.describe_type(), p.default, p.help] for p in COMMON_PARAMS]
    for info in BUILTINS.values():
        rows += [[info.name, p.name, p.describe_type(), p.default, p.help] for p in info.params]
    write_rows(columns, [rows], fmt, max_rows)
