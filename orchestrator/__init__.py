"""stepscope.orchestrator: sweep specs, trial grids, Ray scheduling and the `stepscope` CLI.

The only package that imports Ray (scheduler, jobs) or Click (cli and its commands/,
options, output, progress); spec, grid and store_admin are pure. The layer contract in pyproject.toml (`lint-imports`) holds this.
"""
