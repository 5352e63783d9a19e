"""End-to-end helpers: run the real `stepscope` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def stepscope(tmp_path):
    """stepscope(*args, timeout=...) -> CompletedProcess, run in tmp_path."""

    def run(*args: str, timeout: float = 300, check_rc: int | None = None, env: dict | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("RAY_ADDRESS", None)
        env.pop("STEPSCOPE_STORE", None)
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check_rc is not None:
            assert proc.returncode == check_rc, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        return proc

    return run
