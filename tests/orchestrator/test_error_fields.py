"""Library errors name the library's own inputs (`store /x: ...` for `Store('/x')`, `by nosuch:
...` for `compare(con, by='nosuch')`), each a `stepscope.errors.Field`; the CLI prints each as
the option that gives it (`--store /x: ...`), in one place (`options.option_of`, which `cli`
applies). So a Python caller never reads of an option it did not pass, and the CLI's lines
stay what they were (the CLI tests pin them)."""

from __future__ import annotations

import importlib
import pkgutil
import socket

import click
import pytest

from stepscope.errors import Field, StepscopeError
from stepscope.orchestrator.options import OPTION_OF_FIELD, option_of

#: The packages whose errors name fields (workloads.measure imports torch and names none).
PACKAGES = ("stepscope.storage", "stepscope.analysis", "stepscope.orchestrator")


def library_fields() -> dict[str, Field]:
    """Every Field a module of PACKAGES holds at its top level, by module.name."""
    found = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            mod = importlib.import_module(info.name)
            found.update({f"{info.name}.{name}": value for name, value in vars(mod).items() if isinstance(value, Field)})
    return found


def cli_options() -> set[str]:
    from stepscope.orchestrator.cli import cli

    options: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            options.update(o for o in param.opts if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    return options


def test_every_field_the_library_names_is_given_by_an_option_of_the_cli():
    fields = library_fields()
    assert {"store", "by", "address", "out_path"} <= {f.name for f in fields.values()}, fields
    unmapped = {where: f.name for where, f in fields.items() if f.name not in OPTION_OF_FIELD}
    assert not unmapped, f"add these to options.OPTION_OF_FIELD: {unmapped}"
    assert set(OPTION_OF_FIELD.values()) <= cli_options()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raised(call) -> StepscopeError:
    with pytest.raises(StepscopeError) as caught:
        call()
    return caught.value


def test_library_errors_name_no_option_and_the_cli_spells_each_field_as_its_option(tmp_path, monkeypatch):
    from stepscope.analysis.report.render import check_out_path
    from stepscope.orchestrator import jobs
    from stepscope.orchestrator.spec import check_gpu_label, check_sweep_id

    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    where = f"http://127.0.0.1:{_closed_port()}"
    # (the error, what the library says, what the CLI prints after "Error: ")
    cases = [
        (_raised(lambda: jobs.check_job_store("rel/results")),
         "store rel/results: the sweep's driver runs on the cluster, so give a store it can reach: an object store "
         "URI (s3://bucket/prefix) or an absolute path on a shared mount",
         "--store rel/results: the sweep's driver runs on the cluster, so give a store it can reach: an object store "
         "URI (s3://bucket/prefix) or an absolute path on a shared mount"),
        (_raised(lambda: jobs.jobs_address(None)),
         "address: give the cluster's job server, e.g. http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)",
         "--address: give the cluster's job server, e.g. http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)"),
        (jobs.unreachable(where),
         f"address {where}: no Ray job server answers there; {jobs.START_JOB_SERVER}",
         f"--address {where}: no Ray job server answers there; {jobs.START_JOB_SERVER}"),
        (_raised(lambda: check_gpu_label("H100 x")),
         "gpu: 'H100 x' is not an accelerator type name, e.g. H100 or A100-SXM4-40GB (at most 64 letters, digits, "
         "., :, - and _)",
         "--gpu: 'H100 x' is not an accelerator type name, e.g. H100 or A100-SXM4-40GB (at most 64 letters, digits, "
         "., :, - and _)"),
        (_raised(lambda: check_sweep_id(".x")),
         "sweep_id: '.x' is not a sweep id; use 1 to 100 letters, digits, ., - and _ (not starting with .)",
         "--sweep-id: '.x' is not a sweep id; use 1 to 100 letters, digits, ., - and _ (not starting with .)"),
        (_raised(lambda: check_out_path(str(tmp_path))),
         f"out_path {tmp_path}: is a folder; give a file name such as {tmp_path / 'report.html'}",
         f"--out {tmp_path}: is a folder; give a file name such as {tmp_path / 'report.html'}"),
    ]
    ours = set(OPTION_OF_FIELD.values())
    for error, library, printed in cases:
        assert str(error) == library
        assert not {word.rstrip(":,") for word in library.split()} & ours, library
        assert error.render(option_of) == printed


def test_the_cli_prints_a_wrapped_errors_fields_as_options(cli_runner, tmp_path):
    """`store check` over a store whose trials table is a file: TableUnreadable's `store`, inside
    the StoreError that wraps it, is `--store` too."""
    root = tmp_path / "st"
    root.mkdir()
    (root / "trials").write_text("x")
    result = cli_runner("store", "check", "--store", str(root))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (f"Error: --store {root}: {root}/trials: is not a directory; the store's trials table "
                             "must be a folder (move the file away, or point --store at another directory)\n")
