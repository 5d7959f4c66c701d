"""Prefect flows and tasks that wire sdxl_core and governance together, the settings and the CLI."""
