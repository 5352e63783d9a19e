"""Sweeps as Ray jobs: `submit` (the driver runs on the cluster) and `jobs status|logs|stop`."""

from __future__ import annotations

import os
import sys

import click

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator.commands.common import EXIT_OK, EXIT_TRIALS_FAILED, command
from stepscope.orchestrator.spec import check_custom_workloads, load_spec, search_paths
from stepscope.storage.store import StoreError


@click.command()
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
    from stepscope.orchestrator import jobs as j
    from stepscope.orchestrator.grid import expand

    spec = load_spec(spec_path)
    trials = expand(spec)
    check_custom_workloads(spec, trials)
    location = store or os.environ.get("STEPSCOPE_STORE")
    if not location:
        raise StoreError("--store: a submitted sweep needs a store the cluster can reach, e.g. s3://bucket/prefix")
    job_id = j.submit(spec, trials, search_paths(spec), address=address, store=location,
                      trial_timeout=trial_timeout, resume=resume,
                      debug=click.get_current_context().find_root().obj.get("debug", False))
    click.echo(job_id)
    where = j.jobs_address(address)
    click.echo(f"submitted; follow it with: {command('stepscope', 'jobs', 'logs', job_id, '--follow', '--address', where)}", err=True)
    if wait:
        sys.exit(_follow(j.client(address), job_id))


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


@click.group()
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
        # Ours (a JobError from `client`) keeps the inputs it names, for the CLI to spell.
        raise JobError(exc if isinstance(exc, StepscopeError) else one_line(exc, with_type=False)) from None
