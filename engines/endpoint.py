"""An OpenAI-compatible server that is already running (orch neither starts nor stops it)."""

from __future__ import annotations

from .base import Engine
from .llama_server import LlamaServer


class Endpoint(Engine):
    kind = "endpoint"
    props_path = "/props"  # where it is llama-server (behind a proxy), its settings; else none
    methods = ()  # speculation is whatever the server was started with; n_spec is a label
    needs_binary = False
    resolves_model = False  # `model` is the name the server serves, sent in each request
    install_hint = "start the server yourself, then pass its URL"
    # It may be llama-server (behind a proxy): read its timings where the stream carries them.
    stream_counts = LlamaServer.stream_counts
    report_note = "external endpoint: token counts from usage or timings, as the server reports them."

    def default_binary(self) -> str | None:
        return None

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        return []

    def cache_setting(self, workload) -> str:
        return "the endpoint's own (orch did not start it)"
