"""Every trial ends as a row (issue 8, item 5): a workload that calls sys.exit(), an error
text that is not valid UTF-8, a workload that leaves a non-daemon thread running, a loss
that becomes NaN or ±Inf."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest

from stepscope.analysis.warehouse import connect

pytestmark = pytest.mark.slow

WORKLOADS = {
    "exits": """
        import sys

        def build(params):
            sys.exit(3)
        """,
    "badtext": """
        def build(params):
            raise ValueError(b"caf\\xe9 \\xff".decode("utf-8", "surrogateescape"))
        """,
    "lingers": """
        import threading, time, torch
        from stepscope import Workload

        def build(params):
            threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
            return Workload(model=torch.nn.Linear(4, 4), make_batch=lambda: (torch.randn(2, 4), torch.randn(2, 4)),
                            loss_fn=torch.nn.functional.mse_loss)
        """,
}


@pytest.mark.parametrize(("name", "rc", "status", "error"), [
    ("exits", 1, "failed", "SystemExit: 3 (at exits.py:5)"),
    ("badtext", 1, "failed", "ValueError: caf\\udce9 \\udcff (at badtext.py:3)"),
    ("lingers", 0, "ok", None),
])
def test_every_trial_ends_as_a_row(name, rc, status, error, stepscope, tmp_path):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(WORKLOADS[name]))
    (tmp_path / "spec.yaml").write_text(
        f"name: {name}\nfixed: {{iterations: 2, warmup: 0, count_flops: false}}\ngrid: {{workload: ['{name}:build']}}\n")
    t0 = time.monotonic()
    stepscope("trial", "spec.yaml", "--index", "0", "--store", "s", timeout=120, check_rc=rc)
    assert time.monotonic() - t0 < 100  # a lingering thread does not hold the process
    rows = connect(str(tmp_path / "s")).execute("select status, error from trials").fetchall()
    assert rows == [(status, error)]


FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize(("bad", "kind"), [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")])
def test_a_loss_that_is_not_finite_is_a_nonfinite_trial_and_exit_1(bad, kind, stepscope, tmp_path):
    """From step 6 (warmup 2, so measured step 4) the loss function returns `bad`."""
    shutil.copy(FIXTURES / "nonfinite.py", tmp_path / "nonfinite.py")
    (tmp_path / "spec.yaml").write_text(
        "name: nf\nfixed: {iterations: 6, warmup: 2, count_flops: false, batch_size: 2, bad_from: 6}\n"
        f"grid: {{workload: ['nonfinite:build'], bad: ['{bad}']}}\n")
    run = stepscope("trial", "spec.yaml", "--index", "0", "--store", "s", timeout=120, check_rc=1)
    error = f"loss became {kind} at iteration 6 (measured step 4)"
    assert run.stdout.strip().endswith(f"nonfinite: {error}")
    con = connect(str(tmp_path / "s"))
    assert con.execute("select status, nonfinite_step, error from trials").fetchall() == [("nonfinite", 6, error)]
    assert con.execute("select count(*) from steps").fetchone() == (8 * 6,)
    assert con.execute("select count(*) from ok_trials").fetchone() == (0,)  # the named queries leave it out
