"""A scenario run end to end: the scenario file, cells, resume, signals and exit codes."""
