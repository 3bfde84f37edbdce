"""orch's cache: engines installed and models prepared for a scenario, and `orch doctor`'s host checks."""
