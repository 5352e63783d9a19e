"""`stepscope submit`: run a sweep's driver on the cluster through the Ray Jobs API.

The job carries a small working directory: the spec, the custom workload
modules it names (found beside the spec, in the current directory or on
PYTHONPATH) and the local modules they import (those beside the spec or in the
current directory), nothing else, so a spec that sits in a big folder uploads
only what it needs. The job's entrypoint is `stepscope run SPEC` there; its tasks
inherit the working directory, so every worker can import those modules.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator.spec import SpecError, SweepSpec
from stepscope.workloads.registry import is_custom, locate_module
from stepscope.workloads.storage.store import Store, StoreError, is_uri


class JobError(StepscopeError, RuntimeError):
    """The job server cannot be reached or refuses the request."""


def jobs_address(address: str | None) -> str:
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found or not found.startswith(("http://", "https://")):
        raise JobError(
            "--address: give the cluster's job server, e.g. http://HEAD:8265 "
            "(or set RAY_API_SERVER_ADDRESS)"
        )
    return found


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    from stepscope.orchestrator.scheduler import use_token_if_present

    where = jobs_address(address)
    use_token_if_present(where)
    try:
        return JobSubmissionClient(where)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"--address: cannot reach the Ray job server at {where}: {one_line(exc, with_type=False)}") from None


def check_job_store(location: str) -> None:
    """The job's driver runs on the cluster: a path relative to this machine means nothing there."""
    Store(location)
    if not is_uri(location) and not os.path.isabs(location.removeprefix("file://")):
        raise StoreError(
            f"--store {location}: the sweep's driver runs on the cluster, so give a store it can "
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
    with staged(spec, trials, paths) as workdir:
        try:
            return jc.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": workdir},
                metadata={"stepscope_sweep": spec.name},
            )
        except (RuntimeError, ConnectionError, ValueError) as exc:
            raise JobError(f"the job server refused the job: {one_line(exc, with_type=False)}") from None
