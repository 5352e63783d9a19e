"""Analysis: the DuckDB warehouse over a store's Parquet files, and named queries.

Imports neither Ray nor torch.
"""
