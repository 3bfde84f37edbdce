"""Driving one server: prompts, streamed requests timed and validated, /metrics counters."""
