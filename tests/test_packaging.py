"""One import name, `stepscope`: in the wheel, in a fresh environment installed from it, in an
editable install, and for a static tool (jedi) reading a checkout. Nothing here downloads:
pip installs with --no-deps, and builds with the project's own hatchling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds wheels and virtual environments

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("orchestrator", "workloads", "analysis", "queries")  # repository folders, stepscope/<part> installed
GENERIC = ("workloads", "orchestrator", "analysis")  # names no install may expose at the top level

pytest.importorskip("hatchling")


def import_roots(names) -> set[str]:
    """The top-level names a wheel's (or a site-packages') entries install, metadata aside."""
    roots = {n.replace("\\", "/").split("/", 1)[0] for n in names}
    return {r for r in roots if r and not r.endswith((".dist-info", ".pth")) and r != "__pycache__"}


def repo_files(part: str) -> set[str]:
    """stepscope/<part>/... for every file of the repository folder <part> that a build keeps."""
    base = ROOT / part
    return {
        f"stepscope/{part}/{p.relative_to(base).as_posix()}"
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def clean_env(**extra: str) -> dict:
    """An environment that leaks no import path of this session into a child."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


def fresh_venv(path: Path) -> Path:
    """A new, empty virtual environment (no pip: the project's pip installs into it); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True, env=clean_env())
    return path / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, env=clean_env())
    return Path(out.stdout.strip())


def python_in(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, env=clean_env(), timeout=60)


def assert_generic_names_are_not_importable(python: Path, cwd: Path) -> None:
    for name in GENERIC:
        proc = python_in(python, f"import {name}", cwd)
        assert proc.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in proc.stderr, (
            f"`import {name}` must fail in an environment with stepscope installed:\n{proc.stdout}{proc.stderr}"
        )


def pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          env=clean_env(PIP_NO_INDEX="1"), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out), cwd=out)
    (path,) = out.glob("stepscope-*.whl")
    return path


def test_import_roots_sees_every_top_level_package():
    """The check the tests below rely on: an extra top-level package is seen, metadata is not."""
    names = ["stepscope/__init__.py", "stepscope-0.1.0.dist-info/RECORD", "workloads/__init__.py", "mine.py"]
    assert import_roots(names) == {"stepscope", "workloads", "mine.py"}
    assert import_roots(names[:2]) == {"stepscope"}


def test_wheel_has_one_import_name_and_every_part(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    outside = [n for n in names if not n.split("/", 1)[0].endswith(".dist-info") and not n.startswith("stepscope/")]
    assert outside == [], f"the wheel installs more than `stepscope`: {outside}"
    assert import_roots(names) == {"stepscope"}
    for part in PARTS:
        want = repo_files(part)
        got = {n for n in names if n.startswith(f"stepscope/{part}/")}
        assert want and got == want, f"stepscope/{part}: missing {sorted(want - got)}, extra {sorted(got - want)}"
    # What the layout promises, spelled out (the comparison above covers it, this names it).
    for pkg in ("stepscope", "stepscope/orchestrator", "stepscope/workloads", "stepscope/workloads/builtin", "stepscope/storage",
                "stepscope/analysis"):
        assert f"{pkg}/__init__.py" in names
    builtins = [p.name for p in (ROOT / "workloads" / "builtin").iterdir() if (p / "__init__.py").is_file()]
    assert {"mlp", "resnet", "gpt"} <= set(builtins)
    for name in builtins:
        assert f"stepscope/workloads/builtin/{name}/__init__.py" in names
    sql = {n.removeprefix("stepscope/queries/") for n in names if n.startswith("stepscope/queries/") and n.endswith(".sql")}
    repo_sql = {p.relative_to(ROOT / "queries").as_posix() for p in (ROOT / "queries").rglob("*.sql")}
    assert sql == repo_sql and "views.sql" in sql and any(n.startswith("report/") for n in sql)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert re.search(r"^stepscope = stepscope\.orchestrator\.cli:main$", scripts, re.M), scripts


def test_a_wheel_built_from_the_sdist_is_the_same_wheel(wheel, tmp_path):
    """The release path (`python -m build`: an sdist, then a wheel from it) must give the wheel
    `pip wheel .` gives: an sdist has no symbolic links, so nothing may depend on them."""
    import tarfile

    sdist_dir = tmp_path / "sdist"
    proc = subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(sdist_dir)],
                          cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = sdist_dir.glob("stepscope-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        assert not [m.name for m in members if m.issym()], "an sdist must not rely on links"
        packaged = {m.name.split("/")[3] for m in members if m.name.count("/") >= 4 and "/src/stepscope/" in m.name}
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert {"orchestrator", "workloads", "analysis", "queries"} <= packaged
    out = tmp_path / "from-sdist"
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    pip("wheel", str(unpacked), "--no-deps", "--no-build-isolation", "-q", "-w", str(out), cwd=tmp_path)
    (rebuilt,) = out.glob("stepscope-*.whl")
    def files(path):
        return sorted(n for n in zipfile.ZipFile(path).namelist() if not n.endswith("RECORD"))
    assert files(rebuilt) == files(wheel)


def test_installed_copy_finds_its_queries_without_a_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import stepscope.analysis, stepscope.analysis.queries as q\n"
        "print(stepscope.analysis.__file__)\n"
        "print(q.sql_dir())\n"
        "print(sorted(i.name for i in q.list_queries()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1] == str(site / "stepscope" / "queries")
    assert "phase_breakdown" in out[2]


def test_wheel_in_a_fresh_venv_adds_only_stepscope(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    site = site_packages(python)
    before = set(os.listdir(site))
    pip("--python", str(python), "install", "--no-deps", "-q", str(wheel), cwd=tmp_path)
    added = set(os.listdir(site)) - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"stepscope"}, sorted(added)
    assert (python.parent / "stepscope").is_file()  # the console script

    work = tmp_path / "elsewhere"  # not the checkout: its folders must not be importable by accident
    work.mkdir()
    assert_generic_names_are_not_importable(python, work)
    # `import stepscope` and what a custom workload imports need only the standard library
    # (torch, Ray, DuckDB are not in this environment: --no-deps).
    proc = python_in(python, "import stepscope; from stepscope import Workload; print(stepscope.__file__)", work)
    assert proc.returncode == 0, proc.stderr
    package = Path(proc.stdout.strip()).parent
    assert package == site / "stepscope"
    assert (sorted(p.relative_to(package / "queries").as_posix() for p in (package / "queries").rglob("*.sql"))
            == sorted(p.relative_to(ROOT / "queries").as_posix() for p in (ROOT / "queries").rglob("*.sql")))
    assert (package / "workloads" / "builtin" / "mlp" / "__init__.py").is_file()


def test_editable_install_exposes_only_stepscope_and_points_into_the_checkout(tmp_path):
    """What `pip install -e .` installs, into a fresh environment, used from outside the checkout.

    pip's PEP 660 flow in two steps, so that pip only ever acts on the new environment
    (`pip install --prefix` would uninstall the running environment's own stepscope): the
    project's hatchling builds the editable wheel, then the new environment's pip installs it."""
    out = tmp_path / "editable-wheel"
    build = subprocess.run(
        [sys.executable, "-c", "import sys, hatchling.build as b; print(b.build_editable(sys.argv[1]))", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    if build.returncode and "No module named 'editables'" in build.stderr:
        # hatchling's default editable build imports `editables` (pip's build isolation brings it).
        pytest.skip("hatchling's editable build needs `editables` in this environment")
    assert build.returncode == 0, build.stderr
    python = fresh_venv(tmp_path / "venv")
    site = site_packages(python)
    work = tmp_path / "elsewhere"  # not the checkout: its folders must not be importable by accident
    work.mkdir()
    before = set(os.listdir(site))
    pip("--python", str(python), "install", "--no-deps", "-q", str(out / build.stdout.strip().splitlines()[-1]), cwd=work)
    added = set(os.listdir(site)) - before
    assert not import_roots(added), f"an editable install adds packages to site-packages: {sorted(added)}"
    pths = [site / n for n in added if n.endswith(".pth")]
    assert [p.read_text().split() for p in pths] == [[str(ROOT / "src")]], "the .pth must add src/ only"

    assert_generic_names_are_not_importable(python, work)
    proc = python_in(python, "import stepscope, stepscope.workloads as w; from stepscope import Workload; print(w.__file__)", work)
    assert proc.returncode == 0, proc.stderr
    found = Path(proc.stdout.strip())
    assert found == ROOT / "src" / "stepscope" / "workloads" / "__init__.py"
    assert found.resolve() == (ROOT / "workloads" / "__init__.py").resolve()


def _line_of(path: Path, pattern: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if re.match(pattern, line))


@pytest.mark.parametrize(
    ("module", "name", "file", "pattern"),
    [
        ("stepscope.workloads", "Workload", "workloads/api.py", r"class Workload\b"),
        ("stepscope", "Workload", "workloads/api.py", r"class Workload\b"),
        ("stepscope.workloads.measure.runner", "run_trial", "workloads/measure/runner.py", r"def run_trial\b"),
        ("stepscope.analysis.warehouse", "connect", "analysis/warehouse.py", r"def connect\b"),
    ],
)
def test_a_static_tool_resolves_stepscope_names_to_the_checkouts_files(module, name, file, pattern, tmp_path):
    jedi = pytest.importorskip("jedi")
    import stepscope

    if not Path(stepscope.__file__).resolve().is_relative_to(ROOT):
        pytest.skip("stepscope is not installed from this checkout (pip install -e .)")
    user_file = tmp_path / "notebook.py"  # a user's file, outside the checkout
    source = f"from {module} import {name}\n{name}\n"
    user_file.write_text(source)
    script = jedi.Script(source, path=str(user_file), environment=jedi.create_environment(sys.executable, safe=False))
    found = script.goto(2, 0, follow_imports=True)
    assert len(found) == 1 and found[0].module_path, found
    target = ROOT / file
    assert Path(found[0].module_path).resolve() == target.resolve(), found[0].module_path
    assert found[0].line == _line_of(target, pattern)
