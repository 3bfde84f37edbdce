"""The small requests beside the workload, and the secrets around them, against hostile answers."""

import json
import socket
import threading
import time

import pytest
from click.testing import CliRunner

from orchestrator.common import probe
from orchestrator.common import redact
from orchestrator.measure import server_metrics
from orchestrator.cli import cli
from orchestrator.results.rundir import append_jsonl


class DripServer:
    """A raw TCP server that answers with `head` and then drips one byte every `gap_s` until the
    client leaves or the test is over (`limit_s` at most: a guard against a client that never
    leaves, after which the server closes and `closed_by_server` says so)."""

    def __init__(self, head: bytes, drip: bytes, gap_s: float = 0.3, limit_s: float = 120.0):
        self.head, self.drip, self.gap_s, self.limit_s = head, drip, gap_s, limit_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.over = threading.Event()  # the test is over: stop dripping
        self.closed_by_server = False

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self):
        self.sock.settimeout(self.limit_s)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(self.head)
                for _ in range(int(self.limit_s / self.gap_s)):
                    conn.sendall(self.drip)
                    if self.over.wait(self.gap_s):
                        return
                self.closed_by_server = True
            except OSError:
                pass  # the client gave up: what the test wants

    def __exit__(self, *exc):
        self.over.set()
        self.sock.close()


def test_a_probe_whose_headers_drip_ends_at_its_deadline():
    """The headers never end while the test runs: only the probe's own deadline can end it."""
    with DripServer(b"HTTP/1.1 200 OK\r\n", b"X") as server:
        t0 = time.monotonic()
        with pytest.raises(probe.ProbeFailed, match="^TimeoutError$"):
            probe.get(server.url, "/metrics", timeout_s=1.0)
        assert time.monotonic() - t0 >= 1.0 - 1e-3  # a deadline never fires early
        assert not server.closed_by_server


def test_readiness_does_not_wait_for_a_body_that_never_ends():
    """A 200 whose body never ends while the test runs: waiting for it would hit the 1 s deadline
    (no status: None), so a 200 says the probe did not read it."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    with DripServer(head, b"1\r\nx\r\n") as server:
        assert probe.status(server.url + "/health", timeout_s=1.0) == 200
        assert not server.closed_by_server


def metrics(drafts: str, position: str = "0") -> dict:
    return server_metrics.parse(
        f'vllm:spec_decode_num_drafts_total{{a="1"}} {drafts}\nvllm:spec_decode_num_drafts_total{{a="2"}} {drafts}\n'
        f"vllm:spec_decode_num_draft_tokens_total 10\nvllm:spec_decode_num_accepted_tokens_total 5\n"
        f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{position="{position}"}} 5\n')


def test_metrics_that_overflow_or_carry_odd_positions_give_no_window_not_a_crash():
    assert server_metrics.delta(metrics("1"), metrics("1.5e308")) is None  # the sum is inf
    window = server_metrics.delta(metrics("1", "²"), metrics("3", "²"))  # "²" is a digit to isdigit()
    assert window["drafts"] == 4 and list(window["per_pos"]) == ["²"]
    json.dumps(window, allow_nan=False)  # what cells.jsonl will hold


def test_a_secret_that_looks_like_a_number_does_not_break_a_record(tmp_path):
    redact.remember("1234")
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"t_start": 81234.5, "error": "HTTP 401: you sent 1234"})
    assert json.loads(path.read_text()) == {"t_start": 81234.5, "error": "HTTP 401: you sent [redacted]"}


@pytest.mark.parametrize("userinfo, shown", [("me:pw", "me:***"), ("sk-token-as-user", "***")])
def test_url_credentials_of_any_length_are_not_written(tmp_path, userinfo, shown):
    # Nothing listens on port 9: the cell fails, but the run folder and scenario.toml are written.
    url = f"http://{userinfo}@127.0.0.1:9"
    result = CliRunner().invoke(cli, ["bench", "--url", url, "--model", "m", "--out", str(tmp_path / "r"),
                                      "--set", "engines.0.ready_timeout_s=0.5"])
    assert result.exit_code == 1
    run = next((tmp_path / "r").iterdir())
    assert f'url = "http://{shown}@127.0.0.1:9"' in (run / "scenario.toml").read_text()
    secret = f"{userinfo}@"  # a 2-letter password alone turns up by chance in the report's embedded PNGs
    for f in run.rglob("*"):
        if f.is_file() and f.suffix != ".png":
            assert secret not in f.read_text(errors="replace"), f
    assert secret not in result.output


def test_a_key_with_its_newline_is_one_line_not_a_wait(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--api-key-env", "K"],
                                env={"K": "sk-abc123\n"})
    assert result.exit_code == 1
    assert result.output == ("Error: --api-key-env: $K holds spaces, a line end or characters an HTTP header cannot "
                             "carry (a key copied with its newline?); set it to the key alone\n")


def test_a_gauge_of_minus_one_beside_the_counters_does_not_discard_them():
    # vLLM reports a gauge it does not measure as -1 (prefix-cache hit rate with caching off);
    # only the speculation counters must be counts, and other engines' names are not ours.
    text = ("vllm:gpu_prefix_cache_hit_rate -1\nvllm:spec_decode_num_drafts_total 4\n"
            "vllm:spec_decode_num_draft_tokens_total 12\nvllm:spec_decode_num_accepted_tokens_total 6\n"
            "llamacpp:spec_decode_num_drafts_total 99\n")
    got = server_metrics.parse(text, "vllm:")
    assert (got["drafts"], got["draft_tokens"], got["accepted_tokens"]) == (4, 12, 6)
    with pytest.raises(ValueError):
        server_metrics.parse("vllm:spec_decode_num_drafts_total -1\n", "vllm:")
