"""Every command has help ending in an example, and the README names every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepscope.orchestrator.cli import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(cli.commands)


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
    assert f"stepscope {name}" in (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert "stepscope run examples/quickstart.yaml" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in blocks[1].split(" && ")[2:]:  # after creating and activating the venv
        assert step in ci, step
