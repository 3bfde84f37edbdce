"""orch's cache: which engines and models a scenario needs, models fetched and converted (the installers themselves live with their engines)."""
