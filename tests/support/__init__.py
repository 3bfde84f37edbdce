"""Shared test helpers, in one place: stand-in servers for fault injection (canned, fake, hostile,
threaded), the Docker test image, and run folders and scenarios (runs)."""
