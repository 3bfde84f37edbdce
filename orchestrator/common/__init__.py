"""What every layer shares: the exception tree, secret scrubbing, API keys, capped HTTP probes."""
