"""Reports: pure queries (DuckDB -> polars) plus renderers. No torch here."""
