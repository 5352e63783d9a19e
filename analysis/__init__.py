"""stepscope.analysis: the DuckDB warehouse over a store's Parquet files, and named queries.

Imports neither Ray nor torch, nor the measurement code: only the schema
(`stepscope.storage`). The layer contract in pyproject.toml holds this.
"""
