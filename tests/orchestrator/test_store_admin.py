"""The store's upkeep as library calls, without Click: the writability probe `run` makes
before Ray starts, `inspect` (what `store check` prints) and `clean` (what `store clean` does)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from stepscope.orchestrator.store_admin import Cleaned, clean, inspect, probe_local
from stepscope.storage.store import PROBE_DIR, Store, StoreError

SWEEP = "admin-1"
HOUR = 3600.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with one committed trial of one sweep, written by the real runner."""
    from stepscope.orchestrator.scheduler import sweep_row
    from stepscope.orchestrator.spec import parse_spec
    from stepscope.workloads.measure.runner import run_trial
    from stepscope.workloads.registry import resolve_params
    from stepscope.workloads.trial import Trial

    root = tmp_path_factory.mktemp("admin") / "store"
    st = Store(str(root))
    st.write_sweep(sweep_row(parse_spec("name: admin\ngrid: {workload: [mlp]}\n"), SWEEP, 1, None))
    params = resolve_params({"workload": "mlp", "batch_size": 4, "depth": 1, "width": 8, "input_dim": 8,
                             "iterations": 2, "warmup": 1, "count_flops": False})
    run_trial(Trial(0, "t0", 0, None, params), SWEEP, st)
    return root


@pytest.fixture
def store(pristine, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(pristine, root)
    return root


def leftover(store, name: str, age_s: float):
    """A killed writer's temporary file beside the trial's steps file, `age_s` old."""
    path = store / "steps" / f"sweep_id={SWEEP}" / f".{name}.parquet.{'ab' * 16}.tmp"
    path.write_bytes(b"half a file")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_inspect_lists_each_table_and_a_killed_writers_leftovers(store):
    old = leftover(store, "old", 2 * HOUR)
    report = inspect(Store(str(store)))
    assert {t.table for t in report.tables} >= {"trials", "steps", "devices"}
    assert all(len(t.files) == 1 and not t.skipped for t in report.tables if t.table in ("trials", "steps"))
    assert [(item.kind, item.path) for item in report.leftovers] == [("temporary", str(old))]
    assert report.orphans_checked and not report.skipped


def test_clean_removes_only_leftovers_older_than_the_age_and_says_each(store):
    old, young = leftover(store, "old", 2 * HOUR), leftover(store, "young", 5)
    heard = []
    assert clean(Store(str(store)), HOUR, on_removed=heard.append) == Cleaned(removed=1, kept=1, skipped=0)
    assert [item.path for item in heard] == [str(old)]
    assert not old.exists() and young.exists()
    assert clean(Store(str(store)), 0) == Cleaned(removed=1, kept=0, skipped=0)
    assert not young.exists() and inspect(Store(str(store))).leftovers == ()


def test_a_dry_run_clean_removes_nothing(store):
    old = leftover(store, "old", 2 * HOUR)
    heard = []
    assert clean(Store(str(store)), 0, dry_run=True, on_removed=heard.append) == Cleaned(1, 0, 0)
    assert old.exists() and [item.path for item in heard] == [str(old)]


def test_clean_leaves_a_skipped_file_and_counts_it(store):
    notes = store / "trials" / f"sweep_id={SWEEP}" / "notes.txt"
    notes.write_text("mine")
    assert clean(Store(str(store)), 0) == Cleaned(removed=0, kept=0, skipped=1)
    assert notes.exists()


@pytest.mark.parametrize("what", ["nothing", "a file"])
def test_inspect_and_clean_refuse_what_is_no_store(tmp_path, what):
    path = tmp_path / "results"
    if what == "a file":
        path.write_text("x")
    message = {
        "nothing": f"store {path}: no store there (nothing was ever written to it); give the store a sweep wrote to",
        "a file": f"store {path}: is a file, not a directory; give a store directory or a URI",
    }[what]
    for call in (lambda st: inspect(st), lambda st: clean(st, 0)):
        with pytest.raises(StoreError) as caught:
            call(Store(str(path)))
        assert str(caught.value) == message


def test_the_probe_of_an_existing_store_leaves_nothing_behind(store):
    before = sorted(p.name for p in store.iterdir())
    probe_local(Store(str(store)))
    assert sorted(p.name for p in store.iterdir()) == before and PROBE_DIR not in before


def test_the_probe_of_a_store_yet_to_be_made_makes_nothing(tmp_path):
    root = tmp_path / "new" / "store"
    probe_local(Store(str(root)))
    assert list(tmp_path.iterdir()) == []


def test_the_probe_refuses_a_store_under_a_file_or_a_dangling_link(tmp_path):
    (tmp_path / "afile").write_text("x")
    under_file = tmp_path / "afile" / "store"
    with pytest.raises(StoreError) as caught:
        probe_local(Store(str(under_file)))
    assert str(caught.value) == f"store {under_file}: cannot write there: {tmp_path / 'afile'} is a file, not a folder"
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    under_link = tmp_path / "link" / "store"
    with pytest.raises(StoreError) as caught:
        probe_local(Store(str(under_link)))
    assert str(caught.value) == (f"store {under_link}: cannot write there: {tmp_path / 'link'} is a link to "
                                 f"{str(tmp_path / 'gone')!r}, which does not exist")
