"""Damaged copies of a real store (issue 8, item 2): every query gives the undamaged
store's answer, with a warning naming each file it skipped, or one line naming what
cannot be read and exit code 2; never a silently different answer. The resume
reader (`Store.read_rows`) reads the same files as the SQL views.

The store is written by `stepscope trial` itself (two tiny mlp trials); each case
copies it, damages the copy as users' tools and killed writers do, and runs four
queries through the CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from stepscope.orchestrator.cli import cli
from stepscope.storage.store import Store

pytestmark = pytest.mark.slow

SWEEP = "faults-1"
QUERIES = (
    ("sql", "select count(*) as n from trials"),
    ("sql", "select trial_id, count(*) as n from steps group by all order by all"),
    ("query", "trials", "--format", "csv"),
    ("query", "phase_shares", "--format", "csv"),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A store holding two committed trials of one sweep, written by `stepscope trial`."""
    work = tmp_path_factory.mktemp("pristine")
    (work / "spec.yaml").write_text(textwrap.dedent("""
        name: faults
        fixed: {workload: mlp, iterations: 3, warmup: 1, count_flops: false}
        grid: {batch_size: [4, 8]}
        """))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "STEPSCOPE_STORE")}
    for index in ("0", "1"):
        subprocess.run([sys.executable, "-m", "stepscope", "trial", "spec.yaml", "--index", index, "--store", "store",
                        "--sweep-id", SWEEP], cwd=work, env=env, check=True, capture_output=True, timeout=300)
    return work / "store"


def run(store: Path, *args: str):
    return CliRunner().invoke(cli, [*args, "--store", str(store)])


def answers(store: Path) -> list:
    return [run(store, *q) for q in QUERIES]


@pytest.fixture(scope="module")
def expected(pristine) -> list[str]:
    results = answers(pristine)
    assert all(r.exit_code == 0 and not r.stderr for r in results), [r.stderr for r in results]
    assert results[0].stdout.split()[-1] == "2"
    return [r.stdout for r in results]


def trial_files(store: Path, table: str = "trials") -> list[Path]:
    return sorted((store / table / f"sweep_id={SWEEP}").glob("*.parquet"))


def rewrite(path: Path, change) -> None:
    """Rewrite a Parquet file with change(table) -> table."""
    pq.write_table(change(pq.read_table(path)), path)


# Each damage takes the store copy and returns the file a reader must name (or None
# where the damage must be ignored without a word: hidden files, a writer's leftovers).
def hidden_macos_copy(store):
    shutil.copy(trial_files(store)[0], trial_files(store)[0].parent / "._x.parquet")


def hidden_partial_copy(store):
    shutil.copy(trial_files(store)[0], trial_files(store)[0].parent / ".partial.parquet")


def copied_under_another_name(store):
    src = trial_files(store)[0]
    return shutil.copy(src, src.parent / f"{src.stem} copy.parquet")


def copied_into_another_sweep(store):
    target = store / "trials" / "sweep_id=faults-2"
    target.mkdir()
    return shutil.copy(trial_files(store)[0], target)


def steps_file_dropped_into_trials(store):
    return shutil.copy(trial_files(store, "steps")[0], store / "trials" / f"sweep_id={SWEEP}" / "stray.parquet")


def trials_file_missing_required_columns(store):
    path = trial_files(store)[1]
    rewrite(path, lambda t: t.drop_columns(["status", "workload"]))
    return path


def trials_file_with_a_wrong_column_type(store):
    path = trial_files(store)[1]
    rewrite(path, lambda t: t.set_column(t.schema.get_field_index("batch_size"), "batch_size",
                                         pa.array(["eight"] * t.num_rows)))
    return path


def zero_byte_file(store):
    path = trial_files(store)[1]
    path.write_bytes(b"")
    return path


def truncated_file(store):
    path = trial_files(store, "steps")[1]
    path.write_bytes(path.read_bytes()[:200])
    return path


def random_bytes(store):
    path = trial_files(store)[0].parent / "0123abcd.parquet"
    path.write_bytes(os.urandom(4096))
    return path


def file_beside_the_partitions(store):
    return shutil.copy(trial_files(store)[0], store / "trials" / "loose.parquet")


def foreign_file_in_a_partition(store):
    path = trial_files(store)[0].parent / "notes.txt"
    path.write_text("my notes")
    return path


def leftover_temporary_file(store):
    src = trial_files(store, "steps")[0]
    shutil.copy(src, src.parent / f".{src.name}.{'0' * 32}.tmp")


def orphan_steps_of_an_uncommitted_trial(store):
    src = trial_files(store, "steps")[0]
    orphan = src.parent / "feedfacefeedface.parquet"
    shutil.copy(src, orphan)
    rewrite(orphan, lambda t: t.set_column(t.schema.get_field_index("trial_id"), "trial_id",
                                           pa.array(["feedfacefeedface"] * t.num_rows)))


def a_newer_writers_extra_column(store):
    rewrite(trial_files(store)[0], lambda t: t.append_column("from_the_future", pa.array([1.5] * t.num_rows)))


def partition_named_like_a_pattern(store):
    # DuckDB would read `sweep_id=faults-1*` as a pattern that matches the real partition too.
    target = store / "trials" / f"sweep_id={SWEEP}*"
    shutil.copytree(trial_files(store)[0].parent, target)
    return target


DAMAGES = [
    hidden_macos_copy, hidden_partial_copy, copied_under_another_name, copied_into_another_sweep,
    steps_file_dropped_into_trials, trials_file_missing_required_columns, trials_file_with_a_wrong_column_type,
    zero_byte_file, truncated_file, random_bytes, file_beside_the_partitions, foreign_file_in_a_partition,
    leftover_temporary_file, orphan_steps_of_an_uncommitted_trial, a_newer_writers_extra_column,
    partition_named_like_a_pattern,
]
# Damages to a committed trial's own file: the answer is the store without that file.
LOSES_A_FILE = {trials_file_missing_required_columns, trials_file_with_a_wrong_column_type, zero_byte_file,
                truncated_file}


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_a_damaged_store_gives_the_right_answer_or_names_the_file(damage, pristine, expected, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    named = damage(store)
    if damage in LOSES_A_FILE:
        # The right answer is the undamaged store without that file: build it and ask it.
        reference = tmp_path / "reference"
        shutil.copytree(pristine, reference)
        (reference / Path(named).relative_to(store)).unlink()
        want = [r.stdout for r in answers(reference)]
        assert want != expected
    else:
        want = expected
    results = answers(store)
    for result, right in zip(results, want, strict=True):
        assert result.exit_code == 0, result.output
        assert result.stdout == right
        warnings = result.stderr.splitlines()
        if named is None:
            assert warnings == []
        else:
            assert warnings and all(line.startswith("Warning: skipped ") for line in warnings), warnings
            assert any(str(named) in line for line in warnings), (named, warnings)
    # The resume reader reads exactly the files the views read.
    stored = sorted(r["trial_id"] for r in Store(str(store)).read_rows("trials", ["trial_id"]))
    assert len(stored) == int(results[0].stdout.split()[-1])


def test_a_store_path_with_glob_characters_reads_like_any_other(pristine, expected, tmp_path):
    store = tmp_path / "runs [a*b]?{x}"
    shutil.copytree(pristine, store)
    assert [r.stdout for r in answers(store)] == expected


def test_duplicate_rows_of_one_trial_show_once_the_latest_attempt(pristine, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    path = trial_files(store)[0]
    first = pq.read_table(path)
    retried = first.set_column(first.schema.get_field_index("attempt"), first.schema.field("attempt"),
                               pa.array([2], pa.int32()))
    retried = retried.set_column(retried.schema.get_field_index("status"), retried.schema.field("status"),
                                 pa.array(["failed"]))
    pq.write_table(pa.concat_tables([retried, first]), path)
    result = run(store, "sql", f"select attempt, status from trials where trial_id = '{path.stem}'", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["attempt,status", "2,failed"]
    assert run(store, "sql", "select count(*) from trials").stdout.split()[-1] == "2"


@pytest.mark.parametrize("how", ["a file", "a dangling link"])
def test_an_unreadable_table_folder_is_an_error_naming_it(how, pristine, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    shutil.rmtree(store / "trials")
    if how == "a file":
        (store / "trials").write_text("not a folder")
    else:
        (store / "trials").symlink_to(tmp_path / "gone")
    for query in QUERIES:
        result = run(store, *query)
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1 and f"{store / 'trials'}" in result.stderr, result.stderr


def test_store_check_lists_and_store_clean_removes_what_killed_writers_left(pristine, expected, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    leftover_temporary_file(store)
    orphan_steps_of_an_uncommitted_trial(store)
    foreign = trial_files(store, "steps")[0].parent / "notes.txt"  # skipped, but no trials entry
    foreign.write_text("my notes")
    check = run(store, "store", "check")
    assert check.exit_code == 1
    assert "leftover (temporary" in check.stdout and "leftover (orphan" in check.stdout
    assert f"skipped {foreign}: not a .parquet file name" in check.stdout
    young = run(store, "store", "clean")  # the default keeps anything under an hour old
    assert young.exit_code == 0 and "removed 0 leftover file(s); kept 2" in young.stdout
    dry = run(store, "store", "clean", "--older-than", "0", "--dry-run")
    assert "would remove 2 leftover file(s)" in dry.stdout
    clean = run(store, "store", "clean", "--older-than", "0")
    assert clean.exit_code == 0 and "removed 2 leftover file(s)" in clean.stdout, clean.output
    foreign.unlink()
    after = run(store, "store", "check")
    assert after.exit_code == 0, after.stdout
    assert [r.stdout for r in answers(store)] == expected
    assert run(store, "store", "clean", "--older-than", "soon").exit_code == 2


def test_store_clean_keeps_the_steps_of_a_trial_whose_trials_file_is_damaged(pristine, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    damaged = truncated_trials = trial_files(store)[0]
    truncated_trials.write_bytes(truncated_trials.read_bytes()[:100])
    result = run(store, "store", "clean", "--older-than", "0")
    assert result.exit_code == 0 and "removed 0 leftover file(s)" in result.stdout, result.output
    for table in ("steps", "devices"):
        assert (store / table / f"sweep_id={SWEEP}" / damaged.name).exists()


def test_a_store_path_that_is_a_pattern_reads_only_itself(pristine, expected, tmp_path):
    # DuckDB expands glob characters even in a list of paths: `s[1]` would read `s1`.
    store, sibling = tmp_path / "s[1]", tmp_path / "s1"
    shutil.copytree(pristine, store)
    shutil.copytree(pristine, sibling)
    copied_under_another_name(sibling)  # the sibling differs: reading it would show
    results = answers(store)
    assert [r.stdout for r in results] == expected and not any(r.stderr for r in results)


def test_a_dangling_link_is_named_not_dropped(pristine, expected, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    link = store / "trials" / "sweep_id=gone"
    link.symlink_to(tmp_path / "unmounted")
    results = answers(store)
    assert [r.stdout for r in results] == expected
    assert all(f"skipped {link}: a link to" in r.stderr for r in results)
    assert run(store, "store", "check").exit_code == 1


@pytest.mark.parametrize("what", ["a file", "nothing"])
def test_store_check_on_something_that_is_no_store_is_an_error(what, tmp_path):
    path = tmp_path / "results"
    if what == "a file":
        path.write_text("x")
    for command in (("store", "check"), ("store", "clean")):
        result = run(path, *command)
        assert result.exit_code == 2 and result.stderr.startswith(f"Error: --store {path}: "), result.output


def test_run_into_a_store_it_cannot_write_stops_before_anything_runs(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "spec.yaml").write_text("name: w\ngrid: {workload: [mlp]}\n")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "afile" / "s")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: --store {tmp_path / 'afile' / 's'}: cannot write ") and \
        result.stderr.count("\n") == 1, result.output


@pytest.mark.parametrize("how", ["a dangling link", "a renamed file"])
def test_store_clean_keeps_steps_while_any_trials_entry_is_skipped(how, pristine, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    trials = trial_files(store)[0]
    trials.unlink() if how == "a dangling link" else trials.rename(trials.with_suffix(".parquet.bak"))
    if how == "a dangling link":
        trials.symlink_to(tmp_path / "gone.parquet")
    result = run(store, "store", "clean", "--older-than", "0")
    assert result.exit_code == 0 and "removed 0 leftover file(s)" in result.stdout, result.output
    for table in ("steps", "devices"):
        assert (store / table / f"sweep_id={SWEEP}" / trials.name).exists()
    check = run(store, "store", "check")
    assert "are not looked for while a trials entry is skipped" in check.stdout
