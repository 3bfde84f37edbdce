import os
import sys
import time

import pytest

from engines.plan import ServerPlan
from orchestrator.common.errors import ServerExited, ServerTimeout
from orchestrator.launch.launchers import ProcessServer, free_port


def plan(argv, port=None):
    return ServerPlan(argv=argv, port=port or free_port(), health_path="/health", env={})


def test_crash_during_start_is_noticed_at_once_with_log_tail(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('error: unknown argument --bogus'); sys.exit(3)"]
    t0 = time.monotonic()
    with pytest.raises(ServerExited) as err:
        with ProcessServer(plan(argv), tmp_path / "server.log", ready_timeout_s=60) as server:
            server.wait_ready()
    assert time.monotonic() - t0 < 5  # not the 60 s deadline
    assert err.value.returncode == 3
    assert "unknown argument --bogus" in err.value.log_tail


def test_timeout_then_the_process_is_stopped(tmp_path):
    p = plan([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ServerTimeout) as err:
        with ProcessServer(p, tmp_path / "server.log", ready_timeout_s=0.5) as server:
            server.wait_ready()
    assert "not ready after" in str(err.value)
    assert server.proc.poll() is not None


def test_ready_then_the_whole_process_group_is_stopped(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok")
    port = free_port()
    # The server forks a child first: stopping must take the child down too.
    script = ("import subprocess, sys, http.server, functools;"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
              f"h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(tmp_path / 'www')!r});"
              f"http.server.HTTPServer(('127.0.0.1', {port}), h).serve_forever()")
    with ProcessServer(plan([sys.executable, "-c", script], port), tmp_path / "s.log", 30) as server:
        assert server.wait_ready() < 30
        assert server.alive()
        pgid = server.proc.pid
    assert not server.alive()
    time.sleep(0.2)
    assert live_members(pgid) == []


def live_members(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies are dead; some init processes never reap them)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def test_stop_happens_on_keyboard_interrupt(tmp_path):
    p = plan([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(KeyboardInterrupt):
        with ProcessServer(p, tmp_path / "server.log", 30) as server:
            raise KeyboardInterrupt
    assert server.proc.poll() is not None
