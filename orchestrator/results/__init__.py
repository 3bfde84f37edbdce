"""A run folder on disk: the typed records, their schema version, writing and reading them back."""
