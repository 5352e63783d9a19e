from __future__ import annotations

import subprocess
import sys

import pytest

from stepscope.orchestrator.grid import expand, grid_points
from stepscope.orchestrator.spec import parse_spec

SPEC = """
name: g
fixed: {iterations: 3}
grid:
  workload: [mlp, gpt]
  batch_size: [16, 64]
  precision: [fp32, bf16]
exclude:
  - {workload: gpt, batch_size: 64}
"""


def test_product_minus_exclude_in_written_order():
    points = grid_points(parse_spec(SPEC))
    assert len(points) == 6
    assert [(p["workload"], p["batch_size"], p["precision"]) for p in points[:3]] == [
        ("mlp", 16, "fp32"),
        ("mlp", 16, "bf16"),
        ("mlp", 64, "fp32"),
    ]
    assert not any(p["workload"] == "gpt" and p["batch_size"] == 64 for p in points)
    assert all(p["iterations"] == 3 for p in points)


def test_gpus_and_repeats_multiply_the_grid_with_stable_distinct_ids():
    spec = parse_spec(SPEC + "gpus: [A100, H100]\nrepeats: 2\n")
    trials = expand(spec)
    assert len(trials) == 6 * 2 * 2
    assert [t.index for t in trials] == list(range(24))
    assert [t.gpu for t in trials[:12]] == ["A100"] * 12 and trials[12].gpu == "H100"
    assert [t.repeat for t in trials[:7]] == [0] * 6 + [1]
    assert len({t.trial_id for t in trials}) == 24
    again = expand(parse_spec(SPEC + "gpus: [A100, H100]\nrepeats: 2\n"))
    assert [t.trial_id for t in again] == [t.trial_id for t in trials]


def test_trial_id_depends_on_what_is_measured_only():
    base = {t.params["batch_size"]: t.trial_id for t in expand(parse_spec(SPEC)) if t.params["workload"] == "mlp"}
    renamed = expand(parse_spec(SPEC.replace("name: g", "name: other")))
    assert base[16] in {t.trial_id for t in renamed}  # the sweep's name is not part of a trial's id
    changed = expand(parse_spec(SPEC.replace("iterations: 3", "iterations: 4")))
    assert not {t.trial_id for t in changed} & set(base.values())


def test_params_are_resolved_with_defaults():
    t = expand(parse_spec(SPEC))[0]
    assert t.params["depth"] == 4 and t.params["optimizer"] == "adamw" and t.params["warmup"] == 5


@pytest.mark.slow  # a fresh interpreter
def test_plan_imports_neither_torch_nor_ray(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    code = (
        "import sys\n"
        "from stepscope.orchestrator.cli import cli\n"
        "try:\n"
        f"    cli(['plan', {str(spec)!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('torch' in sys.modules, 'ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
    assert "g: 6 trials" in out.stdout
