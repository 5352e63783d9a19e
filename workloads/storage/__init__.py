"""The store: the Parquet schema (`schema`) and atomic writes to a path or a URI (`store`).

Imports neither torch nor Ray nor DuckDB; every layer may use it: the runner writes
with it, the warehouse (`stepscope.analysis`) reads the schema from it.
"""
