"""A small OpenAI-compatible streaming server for tests, on loopback, in a thread.

It sends `tokens_per_chunk` tokens in each SSE chunk, `gap_s` apart, reports per-chunk
(continuous) usage when asked, and exact usage at the end: what a speculative engine does.
"""

from __future__ import annotations

import json
import threading
import time
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


HOLD_S = 120.0  # the longest a stalled stream is held (a guard, never reached by a client with a deadline)


class _QuietServer(ThreadingHTTPServer):
    """A client that drops its connection (orch's probes and deadlines do) is not a server error:
    socketserver would print a traceback to the stderr a CliRunner test reads as orch's output."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeServer:
    # Faults: "http500", "http429", "http503", "not_json", "cut", "no_usage", "stall".
    def __init__(self, total_tokens=24, tokens_per_chunk=4, gap_s=0.02, continuous_usage=True, fault=None, gaps=None):
        self.total, self.k, self.gap, self.continuous = total_tokens, tokens_per_chunk, gap_s, continuous_usage
        self.gaps = list(gaps or [])  # per request in turn, where given: a server whose pace varies
        self.fault = fault
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        # "stall" holds its stream open until the server is stopped (or HOLD_S, a guard against a
        # client that never gives up: the stream then ends short of [DONE], which no deadline says)
        self.released = threading.Event()

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, b'{"status":"ok"}', "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                server.headers.append(dict(self.headers))
                fault = server.fault or ""
                if fault.startswith("http"):
                    return self._send(int(fault[4:]), b'{"error": "injected"}', "application/json")
                if fault == "not_json":
                    return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                sent = 0
                gap = server.gaps[(len(server.bodies) - 1) % len(server.gaps)] if server.gaps else server.gap
                if fault == "stall":  # headers, one chunk, then no bytes until the server is stopped
                    self._event({"choices": [{"index": 0, "delta": {"content": "x"}}]})
                    server.released.wait(HOLD_S)
                    return
                while sent < server.total:
                    n = min(server.k, server.total - sent)
                    sent += n
                    chunk = {"choices": [{"index": 0, "delta": {"content": " tok" * n}, "finish_reason": None}]}
                    if server.continuous and fault != "no_usage":
                        chunk["usage"] = {"prompt_tokens": 5, "completion_tokens": sent}
                    self._event(chunk)
                    time.sleep(gap)
                    if fault == "cut" and sent >= server.total // 2:
                        return  # the connection closes mid-stream: no usage, no [DONE]
                if fault != "no_usage":
                    self._event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": server.total}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _event(self, obj):
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            def _send(self, code, data, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
