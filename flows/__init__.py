"""Prefect flows: thin compositions of castlab functions (see README, "Flows")."""
