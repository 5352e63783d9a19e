"""stepscope.orchestrator: sweep specs, trial grids, Ray scheduling and the `stepscope` CLI.

The only package that imports Ray (scheduler, jobs) or Click (cli, output); spec and
grid are pure. The layer contract in pyproject.toml (`lint-imports`) holds this.
"""
