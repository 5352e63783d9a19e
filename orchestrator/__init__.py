"""Orchestrator: sweep specs, trial grids, Ray scheduling and the `stepscope` CLI.

The only package that imports Ray or Click.
"""
