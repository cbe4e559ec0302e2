"""The managed local services (Label Studio, Prefect server, ML backend)."""
