"""`stepscope report`: one self-contained HTML file whose figures are the store's.

Two stores: a synthetic one of two GPU models (H100, A100), written with the row builders,
whose every phase duration the test chose, so the right figures are computed here with numpy
from those durations; and a real one, two quickstart trials run on this CPU without Ray.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stepscope.analysis.queries import run_query
from stepscope.analysis.report import config_labels, median_ci, render_report, write_report
from stepscope.analysis.warehouse import connect
from stepscope.storage.schema import PHASES
from stepscope.storage.store import Store

ROOT = Path(__file__).resolve().parents[3]
PLOT_SECTIONS = ("phases", "throughput", "mfu", "memory", "ratio", "launch", "compare")
GIB = 2**30

# ---------------------------------------------------------------- the synthetic store

GPUS = {
    "H100": {"device_name": "NVIDIA H100 80GB HBM3", "gpu_variant": "H100 SXM", "uuid": "GPU-1d8c-h100",
             "peak": 989.0, "speed": 1.0, "host": "node-h100", "driver": "550.54.15"},
    "A100": {"device_name": "NVIDIA A100-SXM4-80GB", "gpu_variant": "A100 SXM4 80GB", "uuid": "GPU-77aa-a100",
             "peak": 312.0, "speed": 2.6, "host": "node-a100", "driver": "535.104.05"},
}
SPEC = "name: gpus\nfixed:\n  iterations: 12\n  optimizer: adamw\ngrid:\n  workload: [mlp, gpt]\n" \
       "  batch_size: [16, 64]\n  precision: [bf16, fp32]\ngpus: [H100, A100]\n"
STEPS = 12


def _durations(gpu: str, workload: str, batch: int, precision: str, seed: int) -> dict[str, list[float]]:
    """Each phase's duration_ms per step: a cost model plus 3% noise, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    forward = GPUS[gpu]["speed"] * batch / 16 * (4.0 if workload == "gpt" else 1.0) * (0.5 if precision == "bf16" else 1.0)
    base = {"data": 0.05, "to_device": 0.1, "forward": forward, "loss": 0.05, "backward": 2.1 * forward,
            "optimizer": 0.4}
    return {p: list(base[p] * rng.lognormal(0, 0.03, STEPS)) for p in PHASES}


def _trials():
    """(gpu, workload, batch, precision, repeat) of every trial: mlp bs=16 bf16 runs four times
    (compare's MIN_TRIALS: the trials are the samples; a median of four trial medians is not
    their mean)."""
    for gpu in GPUS:
        for workload in ("mlp", "gpt"):
            for batch in (16, 64):
                for precision in ("bf16", "fp32"):
                    for repeat in range(4 if (workload, batch, precision) == ("mlp", 16, "bf16") else 1):
                        yield gpu, workload, batch, precision, repeat


def _launch_bound(gpu: str, workload: str, batch: int) -> bool:
    return (gpu, workload, batch) == ("H100", "mlp", 16)


def _write_gpu_store(store, rows) -> dict:
    """Write the two-GPU sweep; return each trial's durations by (gpu, workload, batch, precision, repeat)."""
    store.write_sweep(rows.sweep("gpus-1", spec=SPEC, name="gpus", trial_count=20))
    written = {}
    for index, (gpu, workload, batch, precision, repeat) in enumerate(_trials()):
        g = GPUS[gpu]
        trial_id = f"t{index:02d}"
        durations = _durations(gpu, workload, batch, precision, seed=index)
        written[(gpu, workload, batch, precision, repeat)] = durations
        params = {"workload": workload, "batch_size": batch, "precision": precision, "optimizer": "adamw",
                  "iterations": STEPS, "seed": repeat}
        flops_forward = int(2e9 * batch * (4 if workload == "gpt" else 1))
        step_ms = float(np.mean([sum(d[i] for d in durations.values()) for i in range(STEPS)]))
        tflops = 3 * flops_forward / step_ms / 1e9
        param_bytes = (200 if workload == "gpt" else 50) * 2**20 // (2 if precision == "bf16" else 1)
        activation = batch * 4 * 2**20
        steps = rows.steps("gpus-1", trial_id, durations)
        for s in steps:
            compute = s["phase"] in ("forward", "loss", "backward")
            s["host_ms"] = s["duration_ms"] * (1.3 if compute and _launch_bound(gpu, workload, batch) else 0.25)
            s["gpu_gap_ms"] = 0.02
            s["peak_allocated_bytes"] = int(4.2 * param_bytes + activation)
            s["peak_reserved_bytes"] = int(4.5 * param_bytes + activation)
        trial = rows.trial(
            "gpus-1", trial_id, index, repeat=repeat, workload=workload, batch_size=batch, precision=precision,
            optimizer="adamw", iterations=STEPS, warmup=0, seed=repeat, params=json.dumps(params, sort_keys=True),
            config_id=f"c-{workload}-{batch}-{precision}", gpu=gpu, gpu_model=gpu, device_kind="cuda",
            device_name=g["device_name"], device_uuid=g["uuid"], device_memory_bytes=80 * GIB,
            driver_version=g["driver"], cuda_version="12.4", host=g["host"], measured_steps=STEPS,
            measured_wall_s=step_ms * STEPS / 1000, samples_per_s=batch * 1000 / step_ms,
            flops_forward=flops_forward, flops_backward=2 * flops_forward, achieved_tflops=tflops,
            gpu_variant=g["gpu_variant"], peak_tflops_datasheet=g["peak"], peak_tflops_measured=0.8 * g["peak"],
            mfu_datasheet=tflops / g["peak"], mfu_measured=tflops / (0.8 * g["peak"]), param_bytes=param_bytes,
            grad_bytes=param_bytes, optimizer_state_bytes=2 * param_bytes, activation_bytes=activation,
            cuda_context_bytes=500 * 2**20, non_torch_bytes=600 * 2**20, nvml_memory_scope="process",
            schema_version=2,
        )
        device = rows.device("gpus-1", trial_id, g["uuid"], device_kind="cuda", device_name=g["device_name"],
                             gpu_variant=g["gpu_variant"], device_memory_bytes=80 * GIB, sm_count=132,
                             compute_capability="9.0" if gpu == "H100" else "8.0", driver_version=g["driver"],
                             cuda_version="12.4", power_limit_w=700.0, sm_clock_max_mhz=1980, host=g["host"])
        store.write_trial("gpus-1", trial_id, trial, steps, [device])
    return written


_MADE: dict[str, object] = {}


@pytest.fixture
def gpu_store(rows, tmp_path_factory):
    """The two-GPU store, written once for this module (rendering it takes seconds): its Store
    and each trial's durations. Tests only read it."""
    if "store" not in _MADE:
        store = Store(str(tmp_path_factory.mktemp("gpus") / "store"))
        _MADE.update(store=store, durations=_write_gpu_store(store, rows))
    return _MADE["store"], _MADE["durations"]


@pytest.fixture
def gpu_report(gpu_store) -> str:
    """The default report of the two-GPU store, rendered once."""
    if "report" not in _MADE:
        _MADE["report"] = render_report(connect(gpu_store[0]))
    return _MADE["report"]


# ---------------------------------------------------------------- reading the page


class Page(HTMLParser):
    """What a test reads back from the report: per section its SVGs, the text inside them,
    its tables (rows of cell texts), <pre> texts and all its text; and every attribute."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.attributes: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._section = None
        self._cell = None
        self._in = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        self._in.append(tag)
        s = self.sections.get(self._section)
        if tag == "section":
            self._section = dict(attrs)["id"]
            self.sections[self._section] = {"svg": 0, "svg_text": "", "tables": [], "pre": [], "text": ""}
        elif s is None:
            return
        elif tag == "svg":
            s["svg"] += 1
        elif tag == "table":
            s["tables"].append([])
        elif tag == "tr":
            s["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "pre":
            s["pre"].append("")

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
        s = self.sections.get(self._section)
        if tag == "section":
            self._section = None
        elif tag in ("td", "th") and s is not None and self._cell is not None:
            s["tables"][-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if "style" in self._in:
            self.styles.append(data)
        s = self.sections.get(self._section)
        if s is None:
            return
        s["text"] += data
        if self._cell is not None:
            self._cell += data
        if "text" in self._in and "svg" in self._in:
            s["svg_text"] += data + "\n"
        if "pre" in self._in:
            s["pre"][-1] += data

    def table(self, section: str, index: int = 0) -> list[dict]:
        head, *body = self.sections[section]["tables"][index]
        return [dict(zip(head, row, strict=True)) for row in body]


def _fmt3(v: float) -> str:
    return f"{v:,.3f}"


# ---------------------------------------------------------------- the synthetic two-GPU store


def test_the_page_fetches_nothing(gpu_report):
    text, _ = gpu_report
    page = Page(text)
    assert "<script" not in text.lower()
    fetching = [(tag, k, v) for tag, k, v in page.attributes
                if k in ("src", "href", "xlink:href", "srcset", "data", "poster", "action", "background")]
    assert fetching, "the contents' links are there to check"
    inline = [a for a in fetching if not a[2].startswith("#")]  # an internal link; a data: URI would be inline too
    assert inline == []
    css = "\n".join(page.styles) + " ".join(v for _, k, v in page.attributes if k == "style")
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(?!#)", css)
    assert not any(tag in ("link", "iframe", "img", "object", "embed") for tag, _, _ in page.attributes)


def test_one_plot_per_plot_section_with_the_configurations(gpu_report):
    text, plots = gpu_report
    page = Page(text)
    assert [s for s in page.sections] == [*PLOT_SECTIONS, "devices", "sweeps"]
    assert {s: page.sections[s]["svg"] for s in page.sections} == {**dict.fromkeys(PLOT_SECTIONS, 1), "devices": 0,
                                                                   "sweeps": 0}
    assert plots == {s: page.sections[s]["svg"] == 1 for s in page.sections}
    phases = page.sections["phases"]["svg_text"].splitlines()
    for gpu in GPUS:
        assert gpu in phases  # a column of plots per GPU model, titled by it
    for workload in ("mlp", "gpt"):
        for batch in (16, 64):
            for precision in ("bf16", "fp32"):
                assert f"{workload} bs={batch} {precision}" in phases
                assert f"{workload} bs={batch} {precision}" in page.sections["memory"]["svg_text"].splitlines()
    assert "mlp bs=16" in page.sections["mfu"]["svg_text"].splitlines()  # precision is the heat map's column
    assert {"H100", "A100"} <= set(page.sections["throughput"]["svg_text"].replace(" · ", "\n").splitlines())
    assert "capacity 80 GiB" in page.sections["memory"]["svg_text"]


def test_phase_medians_are_the_trials_medians_and_the_queries(gpu_store, gpu_report):
    store, durations = gpu_store
    con = connect(store)
    page = Page(gpu_report[0])
    table = {(r["GPU model"], r["configuration"]): r for r in page.table("phases")}
    assert len(table) == 16
    for gpu, workload, batch, precision in {k[:4] for k in durations}:
        trials = [d for k, d in durations.items() if k[:4] == (gpu, workload, batch, precision)]
        row = table[(gpu, f"{workload} bs={batch} {precision}")]
        assert row["trials"] == str(len(trials))
        for phase in PHASES:  # the median over trials of each trial's median (numpy: linear, as quantile_cont)
            assert row[f"{phase} ms"] == _fmt3(float(np.median([np.median(d[phase]) for d in trials])))
        step = float(np.median([np.median(np.sum([d[p] for p in PHASES], axis=0)) for d in trials]))
        assert row["median step ms"] == _fmt3(step)
    # ... and they are the named queries' figures: phase_shares' median step, phase_breakdown's
    # phase medians (pooled steps: the same figure for a configuration of one trial).
    for r in (dict(zip(*c, strict=True)) for c in _rows(run_query(con, "phase_shares", {"sweep": "all"}))):
        assert table[(r["gpu_model"], f"{r['workload']} bs={r['batch_size']} {r['precision']}")]["median step ms"] \
            == _fmt3(r["step_ms_p50"])
    for r in (dict(zip(*c, strict=True)) for c in _rows(run_query(con, "phase_breakdown", {"sweep": "all"}))):
        row = table[(r["gpu_model"], f"{r['workload']} bs={r['batch_size']} {r['precision']}")]
        if row["trials"] == "1":
            assert row[f"{r['phase']} ms"] == _fmt3(r["median_ms"])


def _rows(result):
    columns, rows = result
    return [(columns, row) for row in rows]


def test_the_whisker_is_the_bootstrap_interval_of_the_median_step(gpu_store, gpu_report):
    _, durations = gpu_store
    page = Page(gpu_report[0])
    table = {(r["GPU model"], r["configuration"]): r for r in page.table("phases")}
    # Four trials: the bootstrap distribution of their median, exactly, over all 4^4 equally
    # likely resamples; the interval's ends sit within its 1-4% and 96-99% quantiles (9999
    # Monte Carlo resamples land there, whatever the seed).
    steps = [float(np.median(np.sum([durations[("H100", "mlp", 16, "bf16", r)][p] for p in PHASES], axis=0)))
             for r in range(4)]
    exact = [float(np.median([steps[i] for i in draw])) for draw in itertools.product(range(4), repeat=4)]
    row = table[("H100", "mlp bs=16 bf16")]
    low, high = (float(x) for x in row["95% CI ms"].split(" – "))
    assert row["CI over"] == "trials"
    assert np.quantile(exact, 0.01) - 0.001 <= low <= np.quantile(exact, 0.04) + 0.001
    assert np.quantile(exact, 0.96) - 0.001 <= high <= np.quantile(exact, 0.99) + 0.001
    assert table[("A100", "gpt bs=64 fp32")]["CI over"] == "step blocks"
    assert median_ci([5.0]) is None and median_ci([2.0, 2.0, None]) == (2.0, 2.0)


def test_the_other_sections_print_the_queries_figures(gpu_store, gpu_report):
    store, _ = gpu_store
    con = connect(store)
    page = Page(gpu_report[0])
    label = {k: f"{w} bs={b} {p}" for k, w, b, p in
             ((c.row_key, c.workload, c.batch_size, c.precision) for c in _configs(con))}
    checks = {  # section: (named query, its column, the report's column, the table's column digits)
        "ratio": ("backward_forward_ratio", "ratio", "ratio", 3),
        "launch": ("launch_bound", "host_device_ratio", "host/device", 3),
        "memory": ("memory_breakdown", "activation_mib", "activations MiB", 2),
        "mfu": ("utilization", "mfu_datasheet", "MFU datasheet", 4),
        "throughput": ("batch_scaling", "samples_per_s_p50", "samples/s (median step)", 3),
    }
    for section, (query, column, shown, digits) in checks.items():
        printed = page.table(section)
        expected = [dict(zip(*c, strict=True)) for c in _rows(run_query(con, query, {"sweep": "all"}))]
        assert len(printed) == len(expected) == 16
        for p, e in zip(printed, expected, strict=True):
            assert p[shown] == f"{e[column]:,.{digits}f}", (section, p, e)
            assert p["GPU model"] == e["gpu_model"]
            if "configuration" in p:
                assert p["configuration"] == label[(e["sweep_id"], e["config_id"], e["gpu_model"], e["device_name"])]
    launch = page.table("launch")
    assert {(r["GPU model"], r["configuration"]) for r in launch if r["launch bound"] == "yes"} == {
        ("H100", "mlp bs=16 bf16"), ("H100", "mlp bs=16 fp32")}


def _configs(con):
    from stepscope.analysis.report import ReportData

    return ReportData.load(con, "all", None).configs


def test_compare_table_is_compares(gpu_store, gpu_report):
    from stepscope.analysis.compare import compare

    store, _ = gpu_store
    con = connect(store)
    page = Page(gpu_report[0])
    result = compare(con, by="gpu_model", sweep="all")  # two GPU models: the default axis
    assert "Along gpu_model: H100 against the baseline A100," in page.sections["compare"]["text"]
    summary = page.table("compare", 0)
    assert [(r["value"], r["metric"], r["geomean ratio"]) for r in summary] == [
        (s["value"], s["metric"], _fmt3(s["geomean_ratio"])) for s in result.summary]
    step = page.table("compare", 1)  # the median step's rows, then every metric's
    assert [(r["metric"], r["ratio"]) for r in step] == [
        ("step_ms", _fmt3(r["ratio"])) for r in result.rows if r["metric"] == "step_ms"]
    assert len(step) == 8 and all(r["verdict"] == "faster" for r in step)  # the H100 model is 2.6x faster
    rows = page.table("compare", 2)
    assert [r["verdict"] for r in rows] == [r["verdict"] for r in result.rows]
    differs = {r["field"]: (r["baseline's"], r["value's"]) for r in page.table("compare", 3)}
    assert differs["driver_version"] == ("535.104.05", "550.54.15")


def test_devices_and_sweep_specs_are_shown_whole(gpu_report):
    page = Page(gpu_report[0])
    devices = {row[0]: row[1:] for row in page.sections["devices"]["tables"][0]}
    assert sorted(devices["UUID"]) == sorted(g["uuid"] for g in GPUS.values())
    for field, key in (("name", "device_name"), ("GPU variant", "gpu_variant"), ("driver", "driver"),
                       ("host", "host")):
        assert sorted(devices[field]) == sorted(g[key] for g in GPUS.values())
    assert devices["memory"] == ["80.0 GiB (85,899,345,920 bytes)"] * 2
    assert devices["power limit W"] == ["700"] * 2 and devices["SM clock max MHz"] == ["1980"] * 2
    assert page.sections["sweeps"]["pre"] == [SPEC]


def test_the_same_store_gives_the_same_bytes(gpu_store, gpu_report):
    assert render_report(connect(gpu_store[0]))[0] == gpu_report[0]


def test_labels_are_unique_per_gpu_model():
    from stepscope.analysis.keys import ConfigKey

    a = ConfigKey("s1", "mlp", 16, "fp32", "adamw", "c1", "H100", "dev")
    b = ConfigKey("s1", "mlp", 16, "fp32", "adamw", "c2", "H100", "dev")  # another depth, say
    c = ConfigKey("s1", "mlp", 16, "fp32", "sgd", "c3", "A100", "dev")
    assert config_labels([a, b]) == {a.row_key: "mlp bs=16 fp32 c1", b.row_key: "mlp bs=16 fp32 c2"}
    assert config_labels([a, c]) == {a.row_key: "mlp bs=16 fp32 adamw", c.row_key: "mlp bs=16 fp32 sgd"}
    assert config_labels([a], omit=("precision",)) == {a.row_key: "mlp bs=16"}


# ---------------------------------------------------------------- the CLI, on real CPU trials


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory):
    """Two quickstart trials (mlp bs=16, fp32 and bf16) run here, on the CPU, without Ray."""
    from click.testing import CliRunner

    from stepscope.orchestrator.cli import cli

    path = str(tmp_path_factory.mktemp("cpu") / "store")
    for index in (0, 1):
        result = CliRunner().invoke(cli, ["trial", str(ROOT / "examples" / "quickstart.yaml"), "--index", str(index),
                                          "--store", path, "--sweep-id", "cpu-1"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return path


def test_report_of_real_cpu_trials(cli_runner, cpu_store, tmp_path):
    out = tmp_path / "report.html"
    result = cli_runner("report", "--out", str(out), "--store", cpu_store)
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert result.output.strip().splitlines()[-1] == f"{out}: {size:,} bytes ({size / 1024:,.0f} KiB)"
    page = Page(out.read_text())
    assert {s: page.sections[s]["svg"] for s in PLOT_SECTIONS} == {**dict.fromkeys(PLOT_SECTIONS, 1), "launch": 0}
    assert "No CUDA trial" in page.sections["launch"]["text"]
    assert "MFU against the datasheet peak: not recorded" in page.sections["mfu"]["text"]
    assert "No device capacity is recorded" in page.sections["memory"]["text"]
    assert "Along precision: " in page.sections["compare"]["text"]  # one device: by precision
    labels = page.sections["phases"]["svg_text"].splitlines()
    assert "mlp bs=16 fp32" in labels and "mlp bs=16 bf16" in labels
    con = connect(cpu_store)
    shares = [dict(zip(*c, strict=True)) for c in _rows(run_query(con, "phase_shares", {"sweep": "all"}))]
    printed = {r["configuration"]: r for r in page.table("phases")}
    for s in shares:
        assert printed[f"mlp bs=16 {s['precision']}"]["median step ms"] == _fmt3(s["step_ms_p50"])
    spec = con.execute("select spec from sweeps").fetchone()[0]
    assert page.sections["sweeps"]["pre"] == [spec] and "name: quickstart" in spec
    devices = {row[0]: row[1:] for row in page.sections["devices"]["tables"][0]}
    assert devices["kind"] == ["cpu"] and devices["torch"][0].startswith("2.")


def test_cli_errors_are_one_line_and_exit_2(cli_runner, cpu_store, tmp_path):
    def run(*args):
        r = cli_runner("report", *args)
        return r.exit_code, r.output.strip()

    missing = tmp_path / "no" / "such"
    assert run("--out", str(missing / "r.html"), "--store", cpu_store) == (
        2, f"Error: --out {missing / 'r.html'}: the folder {missing} does not exist; create it or write elsewhere")
    assert run("--out", str(tmp_path), "--store", cpu_store)[1].startswith(f"Error: --out {tmp_path}: is a folder")
    code, out = run("--out", str(tmp_path / "r.html"), "--store", str(tmp_path / "empty"))
    assert code == 2 and out.startswith("Error: --store") and len(out.splitlines()) == 1
    code, out = run("--out", str(tmp_path / "r.html"), "--store", cpu_store, "--sweep", "nosuch")
    assert (code, out) == (2, "Error: --sweep nosuch: no such sweep in the store; use latest, all, or one of: cpu-1")
    code, out = run("--out", str(tmp_path / "r.html"), "--store", cpu_store, "--by", "workload")
    assert code == 2 and out.startswith("Error: --by workload:")  # one workload: nothing to compare along
    assert not (tmp_path / "r.html").exists() and not list(tmp_path.glob(".stepscope-report-*"))


def test_write_report_replaces_a_file_atomically(gpu_store, tmp_path):
    store, _ = gpu_store
    out = tmp_path / "r.html"
    out.write_text("old")
    info = write_report(connect(store), str(out), sweep="gpus-1", by="precision", baseline="fp32")
    assert info.size_bytes == out.stat().st_size and out.read_text().startswith("<!doctype html>")
    assert "Along precision: bf16 against the baseline fp32," in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ---------------------------------------------------------------- what a person sees


@pytest.mark.slow  # a browser process
@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="needs Chromium for the report's screenshot check: apt-get install chromium (Debian)")
def test_chromium_renders_the_report_offline(gpu_report, tmp_path):
    report, png = tmp_path / "r.html", tmp_path / "r.png"
    report.write_text(gpu_report[0], encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "report_screenshot.py"), str(report), str(png),
                             "--width", "1200", "--height", "2400"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {png}: 1200x2400 pixels")
    from matplotlib import image

    pixels = image.imread(str(png))
    assert pixels.shape[:2] == (2400, 1200) and pixels[..., :3].std() > 0.05


def test_names_are_escaped_in_the_page_and_the_plots(store, write, rows):
    write.sweep("s1", spec="name: odd\n# <script>alert(1)</script>\n")
    write.trial("s1", "t1", {p: [1.0, 1.2, 0.9] for p in PHASES}, workload="w<b>&$1", config_id="c1")
    text, _ = render_report(connect(store))
    assert "<script" not in text and "w<b>" not in text
    page = Page(text)
    assert "w<b>&$1 bs=16 fp32" in page.sections["phases"]["svg_text"].splitlines()  # `$` is no mathtext
    assert page.sections["sweeps"]["pre"] == ["name: odd\n# <script>alert(1)</script>\n"]


def test_a_sweep_whose_trials_all_failed_says_so(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {p: [] for p in PHASES}, status="failed", error="RuntimeError: boom\n  at line 3")
    text, plots = render_report(connect(store), sweep="latest")
    page = Page(text)
    assert not any(plots.values()) and text.count("<svg") == 0
    assert "No ok trial with a whole measured step" in page.sections["phases"]["text"]
    assert "Nothing to compare" in page.sections["compare"]["text"]
    assert "1 failed" in text and "RuntimeError: boom at line 3" in text  # the trials query's one-line error
