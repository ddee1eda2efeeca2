"""Helpers for the pgwarden benchmark harness (``bench/run_pgbench.py``)."""
