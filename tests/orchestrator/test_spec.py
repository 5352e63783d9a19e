"""Bad input: every malformed spec gives one line naming the key, exit code 2,
and nothing is submitted or written."""

from __future__ import annotations

import pytest

from stepscope.orchestrator.spec import parse_spec

GOOD = """
name: ok
grid:
  workload: [mlp]
  batch_size: [4]
"""

# (spec text, the key the message must name, a fragment of the fix)
BAD_SPECS = [
    ("name: x\ngrid: {workload: [mlp]\n", "", "invalid YAML at line"),
    ("- just\n- a list\n", "", "must be a YAML mapping"),
    ("grid: {workload: [mlp]}\n", "name", "missing"),
    ("name: 'bad name!'\ngrid: {workload: [mlp]}\n", "name", "letters, digits"),
    ("name: x\ngrid: {workload: [mlp]}\nbatch_size: 4\n", "batch_size", "parameters go under fixed or grid"),
    ("name: x\ngrid: {workload: [mlp]}\nisolaton: process\n", "isolaton", "did you mean 'isolation'?"),
    ("name: x\ngird: {workload: [mlp]}\n", "gird", "did you mean 'grid'?"),
    ("name: x\n", "grid", "missing"),
    ("name: x\ngrid: {}\n", "grid", "empty"),
    ("name: x\ngrid: {workload: []}\n", "grid.workload", "empty list"),
    ("name: x\ngrid: {workload: mlp}\n", "grid.workload", "expected a list"),
    ("name: x\ngrid: {workload: [nosuch]}\n", "grid.workload", "unknown workload 'nosuch'"),
    ("name: x\ngrid: {workload: [mlp], depht: [2]}\n", "grid.depht", "unknown parameter"),
    ("name: x\ngrid: {workload: [mlp], batch_size: [-4]}\n", "grid.batch_size", "below the minimum 1"),
    ("name: x\ngrid: {workload: [mlp], batch_size: [big]}\n", "grid.batch_size", "expected an integer"),
    ("name: x\ngrid: {workload: [mlp], batch_size: [1.5]}\n", "grid.batch_size", "expected an integer"),
    ("name: x\ngrid: {workload: [mlp], precision: [fp8]}\n", "grid.precision", "not one of"),
    ("name: x\nfixed: {iterations: 0}\ngrid: {workload: [mlp]}\n", "fixed.iterations", "below the minimum"),
    ("name: x\nfixed: {workload: mlp}\ngrid: {workload: [gpt]}\n", "grid.workload", "also set in fixed"),
    ("name: x\ngrid: {workload: [mlp]}\nrepeats: 0\n", "repeats", "positive integer"),
    ("name: x\ngrid: {workload: [mlp]}\ngpus: 7\n", "gpus", "list of GPU types"),
    ("name: x\ngrid: {workload: [mlp]}\nisolation: thread\n", "isolation", "process"),
    ("name: x\ngrid: {workload: [mlp]}\nexclude: [{color: red}]\n", "exclude[0].color", "not a parameter"),
    ("name: x\ngrid: {workload: [mlp]}\nexclude: [{workload: mlp}]\n", "exclude", "removes every grid point"),
    ("name: x\ngrid: {batch_size: [4]}\n", "grid.workload", "needs a workload"),
    ("name: x\ngrid: {workload: ['pkg.mod:']}\n", "grid.workload", "module.path:function"),
    ("name: x\ngrid: {workload: [gpt], n_head: [3], d_model: [128]}\n", "grid.d_model", "multiple of n_head"),
    ("name: x\ngrid: {workload: [mlp], batch_size: [4, 4]}\n", "grid.batch_size", "repeated value"),
    ("name: x\ngrid: {workload: [mlp], width: [[1, 2]]}\n", "grid.width", "single value"),
    # Pure fp16 with Adam/AdamW: an eps float16 cannot hold (torch's own 1e-8 is 0 there).
    ("name: x\nfixed: {precision: fp16, eps: 1e-8}\ngrid: {workload: [mlp], optimizer: [sgd, adamw]}\n",
     "fixed.eps", "1e-08 rounds to 0 in fp16, so adamw divides by 0 and the weights become NaN; use a value "
                  "from 6.1e-05 to 65504 (unset, it is 0.0001), or precision amp_fp16"),
    ("name: x\ngrid: {workload: [mlp], precision: [fp16], optimizer: [adam], eps: [3.0e-5]}\n",
     "grid.eps", "3e-05 rounds to 2.998e-05 in fp16, a subnormal number (0 where denormals are flushed)"),
]


@pytest.mark.parametrize(("text", "key", "fix"), BAD_SPECS, ids=[f"{i}-{b[1] or 'doc'}" for i, b in enumerate(BAD_SPECS)])
def test_bad_spec_is_one_line_naming_the_key_exit_2(text, key, fix, write_spec, cli_runner, tmp_path):
    path = write_spec(text)
    store = tmp_path / "store"
    for args in (["plan", path], ["run", path, "--store", str(store)], ["trial", path, "--index", "0", "--store", str(store)]):
        result = cli_runner(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        prefix = f"Error: {path}: {key}: " if key else f"Error: {path}: "
        assert lines[0].startswith(prefix), lines[0]
        assert fix in lines[0], lines[0]
        assert result.stdout == ""
    assert not store.exists(), "a bad spec must not write anything"


def test_bad_spec_submits_nothing_to_ray(write_spec, cli_runner, tmp_path):
    import ray

    path = write_spec("name: x\ngrid: {workload: [mlp], batch_size: [0]}\n")
    assert cli_runner("run", path, "--store", str(tmp_path / "s")).exit_code == 2
    assert not ray.is_initialized()


def test_missing_spec_file(cli_runner, tmp_path):
    result = cli_runner("plan", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.stderr


def test_custom_workload_not_found_is_spec_error(write_spec, cli_runner, tmp_path):
    path = write_spec("name: x\ngrid: {workload: ['nosuchmod:build']}\n")
    for command in (["plan"], ["run", "--store", str(tmp_path / "s")]):  # found on disk, never imported
        result = cli_runner(command[0], path, *command[1:])
        assert result.exit_code == 2
        assert "workload: cannot find module 'nosuchmod' beside the spec" in result.stderr
    assert not (tmp_path / "s").exists()


def test_good_spec_parses_to_frozen_typed_values():
    spec = parse_spec(GOOD)
    assert spec.name == "ok" and spec.grid == (("workload", ("mlp",)), ("batch_size", (4,)))
    assert spec.isolation == "process" and spec.repeats == 1 and spec.gpus is None
    with pytest.raises(AttributeError):
        spec.name = "other"


def test_float_params_accept_yaml_exponent_strings():
    from stepscope.orchestrator.grid import expand

    spec = parse_spec("name: x\nfixed: {lr: 1e-3}\ngrid: {workload: [mlp]}\n")
    assert expand(spec)[0].params["lr"] == pytest.approx(0.001)


def test_eps_joins_the_params_of_pure_fp16_adam_trials_only():
    from stepscope.orchestrator.grid import expand

    spec = parse_spec("name: x\ngrid: {workload: [mlp], precision: [fp32, fp16, amp_fp16], optimizer: [sgd, adamw]}\n")
    with_eps = {(t.params["precision"], t.params["optimizer"]): t.params.get("eps") for t in expand(spec)}
    assert with_eps == {("fp32", "sgd"): None, ("fp32", "adamw"): None, ("fp16", "sgd"): None,
                        ("fp16", "adamw"): 1e-4, ("amp_fp16", "sgd"): None, ("amp_fp16", "adamw"): None}
    # Where the optimizer state is not float16, any eps the user sets is theirs (torch's own 1e-8 too).
    spec = parse_spec("name: x\nfixed: {eps: 1e-8}\ngrid: {workload: [mlp], precision: [fp32, fp16], optimizer: [sgd]}\n")
    assert [t.params["eps"] for t in expand(spec)] == [1e-8, 1e-8]


def test_custom_workload_accepts_its_own_params():
    from stepscope.orchestrator.grid import expand

    spec = parse_spec("name: x\nfixed: {forward_ms: 5}\ngrid: {workload: ['sleepy:build']}\n")
    assert expand(spec)[0].params["forward_ms"] == 5


def test_spec_hash_ignores_formatting_but_not_meaning():
    a = parse_spec("name: x\ngrid: {workload: [mlp], batch_size: [4, 8]}\n")
    b = parse_spec("# comment\nname: x\ngrid:\n  workload: [mlp]\n  batch_size: [4, 8]\n")
    c = parse_spec("name: x\ngrid: {workload: [mlp], batch_size: [4, 16]}\n")
    assert a.spec_hash == b.spec_hash != c.spec_hash
