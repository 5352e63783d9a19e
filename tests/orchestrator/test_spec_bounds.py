"""Specs are bounded and exact (issue 8, item 4): every kind of oversized, ambiguous or
exotic spec is refused by `stepscope plan` (and `run`/`trial`, which load it alike) in one
line naming the field and the limit, exit code 2, quickly, in bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from stepscope.orchestrator.spec import check_sweep_id, parse_spec

#: A billion laughs: nine levels of ten aliases each, 1,111,111,111 values once expanded.
LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def refused(cli_runner, path: str, *args: str, env: dict | None = None) -> str:
    """Run `stepscope plan SPEC` (or `args`): exit 2 and one line on stderr, no traceback,
    nothing on stdout. Returns the line without its `Error: SPEC: ` prefix."""
    result = cli_runner(*(args or ("plan", path)), env=env)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and "Traceback" not in result.stderr and not lines[0].startswith("Error: unexpected "), result.stderr
    assert result.stdout == ""
    assert lines[0].startswith(f"Error: {path}: "), lines[0]
    return lines[0].removeprefix(f"Error: {path}: ")


def planned(cli_runner, path: str, env: dict | None = None) -> list[str]:
    result = cli_runner("plan", path, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


# ---------------------------------------------------------------- sizes


def test_alias_bomb_is_refused_before_it_is_expanded(write_spec, cli_runner):
    path = write_spec(LAUGHS + "name: x\ngrid: {workload: [mlp], x: *a9}\n")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        line = refused(cli_runner, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 20 * 2**20, peak
    assert line == (
        "line 5: 111,111 YAML values (an alias counts each time it is used), above the limit of 50,000; "
        "write a smaller spec, or raise the limit with STEPSCOPE_MAX_SPEC_NODES"
    )


def test_alias_bomb_through_merge_keys_is_refused(write_spec, cli_runner):
    levels = "b0: &b0 {p: 1}\n" + "".join(
        f"b{i}: &b{i}\n  <<: [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 10)
    )
    line = refused(cli_runner, write_spec(levels + "name: x\ngrid: {workload: [mlp]}\n"))
    assert "YAML values (an alias counts each time it is used), above the limit of 50,000" in line


def test_an_alias_inside_what_it_names_is_refused(write_spec, cli_runner):
    for text in ("name: x\ngrid: &g {workload: [mlp], x: *g}\n", "name: x\ngrid: {workload: [mlp], x: &a [*a]}\n"):
        assert refused(cli_runner, write_spec(text)) == (
            f"line 2: alias *{'g' if '&g' in text else 'a'} is used inside the value it names; "
            "a spec cannot refer to itself"
        )


def test_deep_nesting_is_refused_without_recursion(write_spec, cli_runner):
    path = write_spec("name: x\ngrid: {workload: [mlp], x: " + "[" * 40 + "]" * 40 + "}\n")
    assert refused(cli_runner, path) == "line 2: lists and mappings nested more than 32 deep; a spec needs a few levels"
    line = refused(cli_runner, write_spec("name: x\ngrid: {workload: [mlp], x: " + "[" * 50_000 + "]" * 50_000 + "}\n"))
    assert "nested more than 32 deep" in line or "exceeded maximum nesting depth" in line, line  # libyaml's, or ours
    chain = "c0: &c0 [1]\n" + "".join(f"c{i}: &c{i} [*c{i - 1}]\n" for i in range(1, 40))
    assert refused(cli_runner, write_spec(chain + "name: x\ngrid: {workload: [mlp]}\n")) == (
        "line 32: lists and mappings nested more than 32 deep (aliases expanded); a spec needs a few levels"
    )


def test_a_grid_is_counted_as_a_product_before_it_is_expanded(write_spec, cli_runner):
    values = ", ".join(str(i) for i in range(1, 1001))
    path = write_spec(f"name: x\ngrid: {{workload: [mlp], batch_size: [{values}], seed: [{values}], width: [{values}]}}\n")
    start = time.perf_counter()
    assert refused(cli_runner, path) == (
        "grid: 1 workload x 1,000 batch_size x 1,000 seed x 1,000 width is 1,000,000,000 combinations, "
        "above the limit of 10,000 trials; split the sweep, or raise the limit with STEPSCOPE_MAX_TRIALS"
    )
    assert time.perf_counter() - start < 2


def test_huge_repeats_are_refused(write_spec, cli_runner):
    path = write_spec("name: x\ngrid: {workload: [mlp]}\nrepeats: 1000000000000\n")
    assert refused(cli_runner, path) == (
        "repeats: 1,000,000,000,000 is above the limit of 10,000 trials; split the sweep, or raise the limit "
        "with STEPSCOPE_MAX_TRIALS"
    )


def test_points_times_gpus_times_repeats_is_bounded(write_spec, cli_runner):
    seeds = ", ".join(str(i) for i in range(2000))
    path = write_spec(f"name: x\ngrid: {{workload: [mlp], seed: [{seeds}]}}\ngpus: [A100, H100]\nrepeats: 3\n")
    assert refused(cli_runner, path) == (
        "repeats: 2,000 grid points x 2 GPU types x 3 repeats is 12,000 trials, above the limit of 10,000; "
        "split the sweep, or raise the limit with STEPSCOPE_MAX_TRIALS"
    )


def test_the_trial_limit_counts_what_exclude_leaves(write_spec, cli_runner):
    path = write_spec("name: x\ngrid: {workload: [mlp], seed: [1, 2, 3]}\nexclude: [{seed: 3}]\nrepeats: 2\n")
    assert refused(cli_runner, path, env={"STEPSCOPE_MAX_TRIALS": "3"}).startswith(
        "repeats: 2 grid points x 1 GPU types x 2 repeats is 4 trials, above the limit of 3;")
    assert planned(cli_runner, path, env={"STEPSCOPE_MAX_TRIALS": "4"})[0].startswith("x: 4 trials")


def test_an_environment_variable_raises_a_limit(write_spec, cli_runner):
    seeds = ", ".join(str(i) for i in range(10_001))
    path = write_spec(f"name: x\ngrid: {{workload: [mlp], seed: [{seeds}]}}\n")
    assert "above the limit of 10,000 trials" in refused(cli_runner, path)
    assert planned(cli_runner, path, env={"STEPSCOPE_MAX_TRIALS": "10001"})[0] == "x: 10001 trials (isolation: process)"
    assert refused(cli_runner, path, env={"STEPSCOPE_MAX_TRIALS": "many"}) == (
        "STEPSCOPE_MAX_TRIALS='many' in the environment: expected a positive integer up to 1,099,511,627,776")
    # A limit raised past what a read size can be is refused too, not an OverflowError.
    assert refused(cli_runner, path, env={"STEPSCOPE_MAX_SPEC_BYTES": str(2**70)}).startswith(
        "STEPSCOPE_MAX_SPEC_BYTES='1180591620717411303424' in the environment: expected a positive integer")


def test_a_named_pipe_with_no_writer_is_refused_within_the_wait(cli_runner, tmp_path, monkeypatch):
    import os

    import stepscope.orchestrator.spec as spec_module

    monkeypatch.setattr(spec_module, "PIPE_WAIT_S", 0.5)
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert refused(cli_runner, str(fifo)) == "a pipe that sent nothing in 0 s; give the path of a sweep spec file"
    assert time.monotonic() - t0 < 5


def test_a_pipe_that_sends_a_spec_is_read(cli_runner, tmp_path):
    import os
    import threading

    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        time.sleep(0.3)
        with open(fifo, "w") as f:
            f.write("name: piped\ngrid: {workload: [mlp]}\n")

    threading.Thread(target=feed, daemon=True).start()
    assert planned(cli_runner, str(fifo))[0] == "piped: 1 trial (isolation: process)"


def test_huge_exclude_is_refused(write_spec, cli_runner):
    entries = "".join(f"  - {{seed: {i}}}\n" for i in range(1001))
    path = write_spec(f"name: x\ngrid: {{workload: [mlp], seed: [0]}}\nexclude:\n{entries}")
    assert refused(cli_runner, path) == (
        "exclude: 1,001 entries, above the limit of 1,000; exclude fewer points (or narrow the grid), "
        "or raise the limit with STEPSCOPE_MAX_EXCLUDE"
    )


def test_a_thousand_excludes_over_ten_thousand_points_plan_quickly(write_spec, cli_runner):
    sizes = ", ".join(str(i) for i in range(1, 1001))
    entries = "".join(f"  - {{seed: {i % 10}, batch_size: {i + 1}}}\n" for i in range(1000))
    path = write_spec(f"name: x\ngrid: {{workload: [mlp], seed: [{', '.join(map(str, range(10)))}], "
                      f"batch_size: [{sizes}]}}\nexclude:\n{entries}")
    start = time.perf_counter()
    assert planned(cli_runner, path)[0] == "x: 9000 trials (isolation: process)"
    assert time.perf_counter() - start < 10


def test_a_huge_spec_file_is_refused_without_reading_it(write_spec, cli_runner, tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(b"name: x\n")
        f.truncate(10**10)  # sparse: 10 GB of zeros that are never read
    assert refused(cli_runner, str(path)) == (
        "10,000,000,000 bytes, above the limit of 262,144 bytes for a spec; write a smaller spec, "
        "or raise the limit with STEPSCOPE_MAX_SPEC_BYTES"
    )
    text = "name: x\ngrid: {workload: [mlp]}\ndescription: '" + "y" * 300_000 + "'\n"
    assert "above the limit of 262,144 bytes" in refused(cli_runner, write_spec(text))
    assert planned(cli_runner, write_spec(text), env={"STEPSCOPE_MAX_SPEC_BYTES": "400000"})[0].startswith("x: 1 trial")


def test_too_many_yaml_values_are_refused_while_reading(write_spec, cli_runner):
    path = write_spec("name: x\ngrid: {workload: [mlp], x: [" + ", ".join(["1"] * 60_000) + "]}\n")
    assert refused(cli_runner, path).startswith("line 2: 50,001 YAML values")


# ---------------------------------------------------------------- messages quote values briefly


@pytest.mark.parametrize("text", [
    "name: '{long}'\ngrid: {{workload: [mlp]}}\n",
    "name: x\ngrid: {{workload: ['{long}']}}\n",
    "name: x\ngrid: {{workload: [mlp], precision: ['{long}']}}\n",
    "name: x\ngrid: {{workload: [mlp], x: '{long}'}}\n",
    "name: x\ngrid: {{workload: [mlp]}}\ngpus: ['{long}']\n",
    "name: x\ngrid: {{workload: [mlp]}}\nisolation: '{long}'\n",
    "name: x\ngrid: {{workload: [mlp], width: [[{many}]]}}\n",
    "name: x\nfixed: {{width: {{a: [{many}]}}}}\ngrid: {{workload: [mlp]}}\n",
    "name: x\ngrid: {{workload: [mlp]}}\nrepeats: [{many}]\n",
])
def test_a_message_quotes_a_value_in_at_most_80_characters(text, write_spec, cli_runner):
    path = write_spec(text.format(long="x" * 100_000, many=", ".join(["12345"] * 10_000)))
    line = refused(cli_runner, path)
    assert len(line) < 300, line
    assert "…" in line or "..." in line


# ---------------------------------------------------------------- exact YAML


@pytest.mark.parametrize(("text", "line"), [
    ("name: x\nname: y\ngrid: {workload: [mlp]}\n", "name: the key is repeated at line 2 (first at line 1); keep one"),
    ("name: x\ngrid:\n  workload: [mlp]\n  batch_size: [4]\n  batch_size: [8]\n",
     "grid.batch_size: the key is repeated at line 5 (first at line 4); keep one"),
    ("name: x\ngrid: {workload: [mlp], seed: [1, 2]}\nexclude:\n  - {seed: 1, seed: 2}\n",
     "exclude[0].seed: the key is repeated at line 4 (first at line 4); keep one"),
])
def test_a_repeated_key_is_an_error_naming_it_and_its_lines(text, line, write_spec, cli_runner):
    assert refused(cli_runner, write_spec(text)) == line


@pytest.mark.parametrize(("value", "key", "says"), [
    ("2024-01-01", "fixed.d", "'2024-01-01' reads as a date; a spec holds numbers, strings and true/false: quote it"),
    ("2024-01-01T10:00:00Z", "fixed.d", "reads as a date"),
    ("!!binary aGVsbG8=", "fixed.d", "the YAML tag !!binary is not supported"),
    ("!!set {a, b}", "fixed.d", "the YAML tag !!set is not supported; write a plain mapping"),
    ("!!omap [{a: 1}]", "fixed.d", "the YAML tag !!omap is not supported; write a plain list"),
    ("!!python/object:os.system x", "fixed.d", "the YAML tag !!python/object:os.system is not supported"),
    ("!custom 3", "fixed.d", "the YAML tag '!custom' is not supported"),
    ("!!bool maybe", "fixed.d", "'maybe' cannot be read as true/false; write a plain value (no tag)"),
    ("!!int ''", "fixed.d", "'' cannot be read as an integer"),
    ("!!timestamp 3", "fixed.d", "'3' reads as a date"),
    (".inf", "fixed.d", "'.inf' is not a finite number"),
    ("99999999999999999999", "fixed.d", "'99999999999999999999' does not fit in 64 bits"),
    ("9" * 5000, "fixed.d", "is too large; integers must fit in 64 bits"),
    ("{on: 1}", "fixed.d", "the key 'on' reads as true/false, not a name (YAML reads yes/no/on/off as true/false); quote it"),
    ("{1: 1}", "fixed.d", "the key '1' reads as an integer, not a name; quote it"),
    ("{[a]: 1}", "fixed.d", "a key must be a name, not a list or mapping"),
    ("{2024-01-01: 1}", "fixed.d", "the key '2024-01-01' reads as a date, not a name; quote it"),
    ("{'': 1}", "fixed.d", "the key '' is not a name: give 1 to 100 printable characters"),
    ('{"a\\tb": 1}', "fixed.d", "the key 'a\\tb' is not a name"),
])
def test_a_value_beyond_plain_yaml_is_an_error_naming_its_key(value, key, says, write_spec, cli_runner):
    line = refused(cli_runner, write_spec(f"name: x\nfixed:\n  d: {value}\ngrid: {{workload: ['m:b']}}\n"))
    assert line.startswith(f"{key}: line "), line
    assert says in line, line


def test_merge_keys_still_work():
    spec = parse_spec("name: x\nfixed:\n  <<: &b {iterations: 3, warmup: 2}\n  warmup: 1\n"
                      "grid: {workload: [mlp], depth: [2, 4], width: [8, 16]}\nexclude: [{<<: &e {depth: 4}, width: 8}]\n")
    assert dict(spec.fixed) == {"iterations": 3, "warmup": 1}  # a key beside << wins
    assert spec.exclude == ((("depth", 4), ("width", 8)),)


def test_text_that_is_not_yaml_is_one_line(write_spec, cli_runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\xff\n")
    assert refused(cli_runner, str(bad)) == "cannot read it as text: byte 8 is not UTF-8"
    ctrl = write_spec("name: x\x00\ngrid: {workload: [mlp]}\n")
    assert refused(cli_runner, ctrl) == (
        "invalid YAML at character 8: #x0000 is not allowed in YAML (control characters are not allowed)")
    assert refused(cli_runner, write_spec("name: x\n---\nname: y\n")).startswith("invalid YAML at line 2")
    with pytest.raises(ValueError, match="character 8 is not valid text"):
        parse_spec("name: x\ud800\n")


# ---------------------------------------------------------------- values fit the store


@pytest.mark.parametrize(("setting", "key", "says"), [
    ("seed: [9223372036854775808]", "grid.seed[0]", "does not fit in 64 bits"),
    ("seed: [-1]", "grid.seed", "-1 is below the minimum 0"),
    ("batch_size: [0]", "grid.batch_size", "0 is below the minimum 1"),
    ("iterations: [0]", "grid.iterations", "0 is below the minimum 1"),
    ("iterations: [1000001]", "grid.iterations", "1000001 is above the maximum 1000000; use a value <= 1000000"),
    ("warmup: [-1]", "grid.warmup", "-1 is below the minimum 0"),
    ("warmup: [1000001]", "grid.warmup", "above the maximum 1000000"),
    ("num_threads: [1000000]", "grid.num_threads", "1000000 is above the maximum 1024; use a value <= 1024"),
    ("num_threads: [-1]", "grid.num_threads", "below the minimum 0"),
    ("batch_size: [true]", "grid.batch_size", "expected an integer, got True (bool)"),
])
def test_parameters_fit_their_columns_and_sane_ranges(setting, key, says, write_spec, cli_runner):
    line = refused(cli_runner, write_spec(f"name: x\ngrid: {{workload: [mlp], {setting}}}\n"))
    assert line.startswith(f"{key}: ") and says in line, line


def test_the_largest_values_that_fit_are_accepted():
    from stepscope.orchestrator.grid import expand

    spec = parse_spec("name: x\ngrid: {workload: [mlp], seed: [9223372036854775807], batch_size: [9223372036854775807],"
                      " iterations: [1000000], warmup: [1000000], num_threads: [1024]}\n")
    params = expand(spec)[0].params
    assert params["seed"] == params["batch_size"] == 2**63 - 1 and params["num_threads"] == 1024


def test_custom_workload_parameters_are_bounded_too(write_spec, cli_runner):
    line = refused(cli_runner, write_spec("name: x\ngrid: {workload: ['m:b'], n: [18446744073709551616]}\n"))
    assert line.startswith("grid.n[0]: line 2: '18446744073709551616' does not fit in 64 bits"), line
    line = refused(cli_runner, write_spec("name: x\ngrid: {workload: ['m:b'], n: [.nan]}\n"))
    assert line == "grid.n[0]: line 2: '.nan' is not a finite number"
    line = refused(cli_runner, write_spec("name: x\ngrid: {workload: ['m:b'], batch_size: [0]}\n"))
    assert line.startswith("grid.batch_size: 0 is below the minimum 1")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a" * 65, "ab\\n", "a/b", "..", "", "a b"])
def test_a_name_is_safe_as_a_directory(name, write_spec, cli_runner):
    line = refused(cli_runner, write_spec(f'name: "{name}"\ngrid: {{workload: [mlp]}}\n'))
    assert line.startswith("name: ") and "is not a valid name; use 1 to 64 letters, digits, - and _" in line, line


@pytest.mark.parametrize("label", ["A100\\n", "../x", "a/b", "x" * 65, ".hidden"])
def test_a_gpu_label_is_safe(label, write_spec, cli_runner):
    line = refused(cli_runner, write_spec(f'name: x\ngrid: {{workload: [mlp]}}\ngpus: ["{label}"]\n'))
    assert line.startswith("gpus: ") and "is not an accelerator type name" in line and "at most 64" in line, line


@pytest.mark.parametrize("label", ["a/b", "H100\n", "x" * 65, ".."])
def test_a_gpu_label_from_the_command_line_is_checked(label, write_spec, cli_runner):
    path = write_spec("name: x\ngrid: {workload: [mlp]}\ngpus: each\n")
    result = cli_runner("trial", path, "--index", "0", "--gpu", label, "--store", "s")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --gpu: "), result.output
    assert "is not an accelerator type name" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("sweep_id", ["a/b", "x\n", "x" * 101, ".hidden", "", "a=b"])
def test_a_sweep_id_from_the_command_line_is_checked(sweep_id, write_spec, cli_runner, tmp_path):
    path = write_spec("name: x\ngrid: {workload: [mlp]}\n")
    store = tmp_path / "store"
    for command in ("run", "trial"):
        extra = ["--index", "0"] if command == "trial" else []
        result = cli_runner(command, path, *extra, "--store", str(store), "--sweep-id", sweep_id)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("Error: --sweep-id: ") and "is not a sweep id; use 1 to 100 letters" in lines[0]
    assert not store.exists()


def test_generated_sweep_ids_pass_the_check():
    from stepscope.orchestrator.resume import new_sweep_id

    spec = parse_spec(f"name: {'n' * 64}\ngrid: {{workload: [mlp]}}\n")
    assert check_sweep_id(new_sweep_id(spec)) is not None
    assert check_sweep_id("v1.2_run-3") == "v1.2_run-3" and check_sweep_id(None) is None


# ---------------------------------------------------------------- one value, one trial


@pytest.mark.parametrize(("values", "line"), [
    ("lr: [1, 1.0]", "grid.lr: has a repeated value 1.0 (equal to 1); give each value once, and use `repeats` to repeat trials"),
    ("batch_size: [16, 16]", "grid.batch_size: has a repeated value 16; give each value once, and use `repeats` to repeat trials"),
    ("lr: ['1e-3', 0.001]", "grid.lr: '1e-3' and 0.001 are the same value once read as a parameter (0.001); give each value once"),
    ("lr: [1e-3, 0.001]", "grid.lr: '1e-3' and 0.001 are the same value once read as a parameter (0.001); give each value once"),
])
def test_two_grid_values_that_are_one_value_are_an_error(values, line, write_spec, cli_runner):
    assert refused(cli_runner, write_spec(f"name: x\ngrid: {{workload: [mlp], {values}}}\n")) == line


def test_true_and_1_are_two_values_and_two_trials():
    from stepscope.orchestrator.grid import expand

    trials = expand(parse_spec("name: x\ngrid: {workload: ['m:b'], flag: [true, 1]}\n"))
    assert [t.params["flag"] for t in trials] == [True, 1] and trials[0].params["flag"] is True
    assert len({t.trial_id for t in trials}) == 2


def test_an_exclude_value_the_spec_never_takes_is_an_error(write_spec, cli_runner):
    line = refused(cli_runner, write_spec("name: x\ngrid: {workload: ['m:b'], flag: [true, false], n: [1, 2]}\n"
                                          "exclude: [{flag: 1, n: 2}]\n"))
    assert line == "exclude[0].flag: 1 is not a value flag takes in this spec (True, False); this entry would exclude nothing"
    line = refused(cli_runner, write_spec("name: x\nfixed: {iterations: 3}\ngrid: {workload: [mlp, gpt]}\n"
                                          "exclude: [{iterations: 4, workload: gpt}]\n"))
    assert line.startswith("exclude[0].iterations: 4 is not a value iterations takes in this spec (3)")


def test_exclude_matches_1_and_1_0_alike():
    from stepscope.orchestrator.grid import grid_points

    spec = parse_spec("name: x\ngrid: {workload: [mlp], batch_size: [16, 32]}\nexclude: [{batch_size: 16.0}]\n")
    assert [p["batch_size"] for p in grid_points(spec)] == [32]
