"""Charts and the report, drawn from a run folder's saved records alone."""
