"""orch: launch LLM servers at several speculative-decoding settings and measure them."""

__version__ = "0.1.0"
