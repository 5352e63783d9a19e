"""The store: the Parquet schema (`schema`), atomic writes to a path or a URI (`store`), and
which file holds which trial (`layout`).

Imports neither torch nor Ray nor DuckDB; every layer may use it: the runner writes
with it, the warehouse (`stepscope.analysis`) reads the schema from it. It is not a
workload, so it sits beside `stepscope.errors`, not under `stepscope.workloads`.
"""
