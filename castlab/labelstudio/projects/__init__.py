"""Label Studio review projects, one module per review interface."""
