"""Prefect flows: thin compositions of castlab functions (see docs/index.md)."""
