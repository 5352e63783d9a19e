"""Every command has help ending in an example; the README and docs/ name every command, the
README opens with the two commands, stays short and links every page of docs/, every relative
link resolves, and docs/cli.md is what docs/make_cli_reference.py writes now."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from stepscope.orchestrator.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COMMANDS = sorted(cli.commands)


def docs_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def documentation() -> str:
    """README.md and every docs/*.md, as one text: where a documented command or figure may live."""
    return "\n".join(p.read_text(encoding="utf-8") for p in [README, *docs_pages()])


def test_the_contract_commands_exist():
    assert {"plan", "run", "trial", "workloads", "query", "sql"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_with_an_example(name, cli_runner):
    result = cli_runner(name, "--help")
    assert result.exit_code == 0
    assert cli.commands[name].help and "Example:" in result.output
    assert "Example:" in cli.commands[name].help.split("\n\n", 1)[-1]


@pytest.mark.parametrize("name", COMMANDS)
def test_readme_documents_command(name):
    """Each command is named in the README or a page of docs/ (not only in the generated cli.md)."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in [README, *docs_pages()] if p.name != "cli.md")
    assert f"stepscope {name}" in text


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    readme = README.read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert "stepscope run examples/quickstart.yaml" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in blocks[1].split(" && ")[2:]:  # after creating and activating the venv
        assert step in ci, step


def test_readme_is_short_and_links_every_docs_page():
    readme = README.read_text(encoding="utf-8")
    lines = len(readme.splitlines())
    assert lines < 200, f"README.md has {lines} lines: move detail into docs/"
    linked = {target for _, target in relative_links(README)}
    unlinked = [p.name for p in docs_pages() if f"docs/{p.name}" not in linked]
    assert docs_pages() and not unlinked, f"README.md does not link {unlinked}"


#: [text](target) and ![alt](target), the target up to a space or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative Markdown link on the page, outside code blocks."""
    found, fenced = [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                found.append((number, target))
    return found


@pytest.mark.parametrize("page", [README, *docs_pages()], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_relative_links_resolve_to_files_without_anchors(page):
    """Relative links name a file that exists, and no anchor: heading anchors differ from one
    code host's renderer to the next, so a page is named, and the section by its title in the text."""
    bad = []
    for number, target in relative_links(page):
        if "#" in target:
            bad.append(f"{page.name}:{number}: {target}: an anchor; link the page, name the section")
        elif not (page.parent / target).exists():
            bad.append(f"{page.name}:{number}: {target}: no such file")
    assert not bad, "\n".join(bad)


def test_docs_cli_reference_is_what_the_script_writes_now():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = DOCS / "cli.md"
    assert page.exists() and page.read_text(encoding="utf-8") == script.render(), (
        "docs/cli.md is not what the commands' --help says now: run `python docs/make_cli_reference.py`"
    )


def test_the_layout_names_every_module():
    """docs/architecture.md's layout names every module and SQL file, so a newcomer finds a
    concept's home there in one look (the old README's layout had left out half of them)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layout = text.split("<!-- LAYOUT -->", 1)[1].split("<!-- /LAYOUT -->", 1)[0]
    missing = [str(p.relative_to(ROOT)) for part in ("orchestrator", "workloads", "analysis", "queries", "src/stepscope")
               for p in sorted((ROOT / part).rglob("*")) if p.suffix in (".py", ".sql") and p.name != "__init__.py"
               and "__pycache__" not in p.parts and p.name not in layout]
    assert not missing, f"docs/architecture.md's layout does not name: {missing}"
