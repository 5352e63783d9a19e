"""`stepscope submit`: run a sweep's driver on the cluster through the Ray Jobs API.

The job carries a small working directory: the spec, the custom workload
modules it names (found beside the spec, in the current directory or on
PYTHONPATH) and the local modules they import (those beside the spec or in the
current directory), nothing else, so a spec that sits in a big folder uploads
only what it needs. The job's entrypoint is `stepscope run SPEC` there; its tasks
inherit the working directory, so every worker can import those modules.
Stopped (`stepscope jobs stop`), the job's driver prints, and `jobs stop` too, the
`stepscope submit SPEC ... --resume` that continues the sweep from this machine.
"""

from __future__ import annotations

import ast
import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator.cluster import ADDRESS
from stepscope.orchestrator.spec import SpecError, SweepSpec
from stepscope.storage.store import STORE, Store, StoreError, is_uri
from stepscope.workloads.registry import is_custom, locate_module


class JobError(StepscopeError, RuntimeError):
    """The job server cannot be reached or refuses the request."""


#: How to get a job server, said by every error that finds none.
START_JOB_SERVER = (
    "start the head with its dashboard, which serves the Ray Jobs API: "
    "`ray start --head --include-dashboard=true` (port 8265, or --dashboard-port); "
    "deploy/local-cluster.sh up starts it (unless STEPSCOPE_LOCAL_DASHBOARD=0) and prints its address"
)

#: Set in a submitted job's environment: the command that resumes the sweep from where it was
#: submitted (`stepscope submit SPEC --address ... --store ... --resume`). The job's driver
#: (`stepscope run`, interrupted by `stepscope jobs stop`) prints it instead of a `run` of the
#: spec copied into the job's working directory, which exists on the cluster only.
RESUME_COMMAND_ENV = "STEPSCOPE_RESUME_COMMAND"

#: The job's metadata key holding that same command, for `stepscope jobs stop` to print.
RESUME_METADATA_KEY = "stepscope_resume"

#: Seconds Ray's job supervisor waits after SIGTERM before it kills the driver, set through
#: the job's env_vars (`RAY_JOB_STOP_WAIT_TIME_S`; Ray's default is 3, DEFAULT_RAY_JOB_STOP_WAIT_TIME_S in
#: https://github.com/ray-project/ray/blob/master/python/ray/dashboard/modules/job/job_supervisor.py):
#: enough for the driver to cancel its trials and print how to resume.
STOP_WAIT_S = 30


def jobs_address(address: str | None) -> str:
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found or not found.startswith(("http://", "https://")):
        given = f" {found}" if found else ""
        raise JobError(
            ADDRESS, f"{given}: give the cluster's job server, e.g. http://HEAD:8265 "
            "(or set RAY_API_SERVER_ADDRESS)"
        )
    return found


def client(address: str | None):
    from stepscope.orchestrator.scheduler import use_token_if_present

    where = jobs_address(address)
    use_token_if_present(where)  # before Ray is imported: it reads RAY_AUTH_MODE once
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(where)
    except AuthenticationError:
        raise JobError(
            ADDRESS, f" {where}: the job server wants the cluster's token: export RAY_AUTH_MODE=token, "
            "with the token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        ) from None
    except (OSError, RuntimeError, ValueError):  # requests' errors are OSErrors
        raise unreachable(where) from None


def unreachable(where: str) -> JobError:
    """The one-line error for a job server address that did not answer as one: nothing
    listens there (how to start one), or something else does (which port to give)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(where)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname or "", port), timeout=3):
            pass
    except (OSError, ValueError):
        return JobError(ADDRESS, f" {where}: no Ray job server answers there; {START_JOB_SERVER}")
    return JobError(
        ADDRESS, f" {where}: this port answers, but not as a Ray job server (a GCS or Ray Client "
        "port?); give the dashboard's address, http://HEAD:8265 unless the head was started with "
        "another --dashboard-port"  # `ray start`'s option, not ours
    )


def resume_command(spec_path: str, address: str, store: str, trial_timeout: float | None) -> str:
    """`stepscope submit SPEC --address ADDR --store STORE [--trial-timeout S] --resume`, each
    argument as the user gave it, shell-quoted: what resumes a submitted sweep from the
    machine it was submitted from."""
    args = ["stepscope", "submit", spec_path, "--address", address, "--store", store]
    if trial_timeout:
        args += ["--trial-timeout", f"{trial_timeout:g}"]
    return shlex.join([*args, "--resume"])


def check_job_store(location: str) -> None:
    """The job's driver runs on the cluster: a path relative to this machine means nothing there."""
    Store(location)
    if not is_uri(location) and not os.path.isabs(location.removeprefix("file://")):
        raise StoreError(
            STORE, f" {location}: the sweep's driver runs on the cluster, so give a store it can "
            "reach: an object store URI (s3://bucket/prefix) or an absolute path on a shared mount"
        )


def module_files(spec: SweepSpec, names: list[str], paths: list[str]) -> list[str]:
    """What to ship with the job: the file or package directory of each custom workload's
    top-level module (`stepscope.workloads.registry.locate_module`), and of every local
    module those import, transitively. A module is local when it sits directly in one of
    `paths` (beside the spec, the current directory): installed packages are the
    cluster's to provide. Imports are read from the source (`ast`), never run."""
    local_dirs = {os.path.abspath(p) for p in paths}
    todo = []
    for name in names:
        where = locate_module(name, paths)
        if where is None:
            top = name.partition(":")[0].split(".")[0]
            raise SpecError(spec.source, "workload", f"cannot find module {top!r} to send with the job")
        todo.append(where)
    found: set[str] = set()
    seen: set[str] = set()
    while todo:
        where = todo.pop()
        if where in found:
            continue
        found.add(where)
        for top in sorted(_imported_top_names(where) - seen):
            seen.add(top)
            dep = locate_module(top, paths)
            if dep is not None and os.path.dirname(os.path.abspath(dep)) in local_dirs:
                todo.append(dep)
    return sorted(found)


def _imported_top_names(where: str) -> set[str]:
    """The top-level names that a module file, or every .py file of a package
    directory, imports absolutely (`import a.b`, `from a.b import c`: "a")."""
    files = [where] if os.path.isfile(where) else [
        os.path.join(d, f) for d, _, fs in os.walk(where) if "__pycache__" not in d for f in fs if f.endswith(".py")
    ]
    names: set[str] = set()
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # the worker will meet it and report it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@contextmanager
def staged(spec: SweepSpec, trials, paths: list[str]) -> Iterator[str]:
    """A temporary working directory holding the spec and its custom modules."""
    names = sorted({t.params["workload"] for t in trials if is_custom(t.params["workload"])})
    with tempfile.TemporaryDirectory(prefix="stepscope-job-") as tmp:
        shutil.copy(spec.source, os.path.join(tmp, os.path.basename(spec.source)))
        for path in module_files(spec, names, paths):
            dest = os.path.join(tmp, os.path.basename(path))
            if os.path.isdir(path):
                shutil.copytree(path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(path, dest)
        yield tmp


#: Ray's loggers that print an INFO line per upload of the job's working directory.
_UPLOAD_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging")


def submit(
    spec: SweepSpec, trials, paths: list[str], *, address: str | None, store: str,
    trial_timeout: float | None, resume: bool, debug: bool = False,
) -> str:
    check_job_store(store)
    jc = client(address)
    args = ["stepscope", *(["--debug"] if debug else []), "run", os.path.basename(spec.source), "--store", store]
    if trial_timeout:
        args += ["--trial-timeout", f"{trial_timeout:g}"]
    if resume:
        args.append("--resume")
    entrypoint = " ".join(shlex.quote(a) for a in args)
    again = resume_command(spec.source, jobs_address(address), store, trial_timeout)
    # The job's supervisor runs with its env_vars too, and reads RAY_JOB_STOP_WAIT_TIME_S there.
    env_vars = {RESUME_COMMAND_ENV: again, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    for name in _UPLOAD_LOGGERS:  # their INFO lines narrate the upload; stepscope says what matters
        logging.getLogger(name).setLevel(logging.WARNING)
    with staged(spec, trials, paths) as workdir:
        try:
            return jc.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": workdir, "env_vars": env_vars},
                metadata={"stepscope_sweep": spec.name, RESUME_METADATA_KEY: again},
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise JobError(f"the job server refused the job: {one_line(exc, with_type=False)}") from None
