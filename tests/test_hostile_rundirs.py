"""Run folders that are not ours (issue 36): links inside them that point elsewhere, two sweeps of
one folder at once, names too long for the filesystem, and record files sized or filled to exhaust
memory. Each ends in a recorded warning or one line and exit 2, in bounded time and memory, with
nothing written outside the run folder."""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.common.errors import RunFolderError
from orchestrator.results.readback import MAX_LINE
from orchestrator.types.records import RequestRecord
from orchestrator.results.rundir import RunDir

from .support.fake_server import FakeServer
from .support.runs import ORCH, make_run, req

ENGINES = {"e": {"kind": "llama-server", "model": "m"}}
ROWS = [req("e-n0", 0, 10.0, key="a"), req("e-n0", 0, 11.0, key="b"), req("e-n4", 4, 15.0, key="a"),
        req("e-n4", 4, 16.0, key="b")]


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every run, holding a file someone cares about."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("not orch's\n")
    return folder


def endpoint_scenario(tmp_path: Path, url: str, name: str = "hr") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n[workload]\nprompts = ["repeat"]\nmax_tokens = 8\nwarmup = 0\nrepeats = 1\n'
                    f'[[engines]]\nname = "ep"\nkind = "endpoint"\nlauncher = "external"\nurl = "{url}"\n'
                    'model = "m"\nready_timeout_s = 5\n[engines.speculation]\nn_spec = [0]\n')
    return path


# ---------------------------------------------------------------- links inside a run folder


def test_report_refuses_a_report_folder_that_links_outside_and_writes_nothing_there(tmp_path, outside):
    run = make_run(tmp_path / "run", ROWS, ENGINES)
    (run / "report").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    line = one_error_line(invoke("report", run))
    assert line == (f"Error: {run / 'report'}: a symbolic link (to {outside}); orch writes nothing through a link "
                    "in a run folder, since it may point anywhere: remove the link, or copy the run folder with "
                    "`cp -rL RUN COPY` and use the copy")
    assert snapshot(outside) == before


@pytest.mark.parametrize("name", ["summary.csv", "lossless.png", "report/index.html"])
def test_report_refuses_a_file_that_links_outside_and_leaves_its_target_alone(tmp_path, outside, name):
    run = make_run(tmp_path / "run", ROWS, ENGINES)
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).symlink_to(outside / "precious.txt")
    before = snapshot(outside)
    line = one_error_line(invoke("report", run))
    assert line.startswith(f"Error: {run / name}: a symbolic link (to {outside / 'precious.txt'}); ")
    assert snapshot(outside) == before
    assert (run / name).is_symlink()  # refused, not replaced: the user decides what the link was for


def test_a_dangling_link_is_not_followed_to_make_a_file_outside(tmp_path, outside):
    run = make_run(tmp_path / "run", ROWS, ENGINES)
    (run / "pairs.csv").symlink_to(outside / "made-by-orch.csv")
    line = one_error_line(invoke("report", run))
    assert line.startswith(f"Error: {run / 'pairs.csv'}: a symbolic link")
    assert not (outside / "made-by-orch.csv").exists() and snapshot(outside) == {"precious.txt": b"not orch's\n"}


def test_the_run_folder_itself_may_be_a_link(tmp_path):
    real = make_run(tmp_path / "runs" / "real", ROWS, ENGINES)
    latest = tmp_path / "latest"
    latest.symlink_to(real, target_is_directory=True)
    result = invoke("report", latest)
    assert result.exit_code == 0, result.output
    assert (real / "summary.csv").is_file() and (real / "report" / "index.html").is_file()
    assert not [p for p in real.rglob(".*.tmp")]  # the temporary files were all renamed into place


def test_every_write_of_a_sweep_refuses_links_on_its_way(tmp_path, outside):
    run = RunDir(make_run(tmp_path / "run", ROWS, ENGINES))
    (run.path / "cells").symlink_to(outside, target_is_directory=True)
    (run.path / "nodes").mkdir()
    (run.path / "nodes" / "n1").symlink_to(outside, target_is_directory=True)
    (run.path / "requests.jsonl").unlink()
    (run.path / "requests.jsonl").symlink_to(outside / "precious.txt")
    (run.path / "environment.json").unlink()
    (run.path / "environment.json").symlink_to(outside / "precious.txt")
    (run.path / "search.jsonl").symlink_to(outside / "search.jsonl")
    before = snapshot(outside)
    writes = [  # (the link each one meets, the write)
        ("cells", lambda: run.cell_dir("e-n0")),
        ("cells", lambda: run.append_samples("e-n0", 1, [{"t": 0.0}])),
        ("cells", lambda: run.write_server_log("e-n1", "a log")),
        ("nodes/n1", lambda: run.write_node_environment("n1", {"cpu": "x"})),
        ("requests.jsonl", lambda: run.append_request(RequestRecord.model_construct(ok=True))),
        ("environment.json", lambda: run.write_environment({"cpu": "x"})),
        ("search.jsonl", lambda: run.append_search({"engine": "e"})),
    ]
    for link, write in writes:
        with pytest.raises(RunFolderError, match="a symbolic link") as err:
            write()
        assert str(err.value).startswith(f"{run.path / link}: a symbolic link (to {outside}"), str(err.value)
    assert snapshot(outside) == before
    assert not (outside / "search.jsonl").exists()


def test_resume_does_not_cut_a_file_outside_through_a_link(tmp_path, outside):
    with FakeServer(total_tokens=4, tokens_per_chunk=2, gap_s=0.0) as server:
        path = endpoint_scenario(tmp_path, server.url)
        first = invoke("sweep", path, "--out", tmp_path / "r")
        assert first.exit_code == 0, first.output
        (run,) = (tmp_path / "r").iterdir()
        victim = outside / "log.jsonl"
        victim.write_bytes((run / "cells.jsonl").read_bytes() + b'{"half a line')  # repair would cut this
        (run / "cells.jsonl").unlink()
        (run / "cells.jsonl").symlink_to(victim)
        before = snapshot(outside)
        line = one_error_line(invoke("sweep", path, "--out", tmp_path / "r", "--resume"))
    assert line.startswith(f"Error: {run / 'cells.jsonl'}: a symbolic link (to {victim}); ")
    assert snapshot(outside) == before


def test_a_fifo_in_place_of_a_record_file_is_refused_at_once(tmp_path):
    run = RunDir(make_run(tmp_path / "run", ROWS, ENGINES))
    (run.path / "requests.jsonl").unlink()
    os.mkfifo(run.path / "requests.jsonl")  # opened for writing, it would wait for a reader forever
    started = time.monotonic()
    with pytest.raises(RunFolderError, match="not a regular file"):
        run.append_request(RequestRecord.model_construct(ok=True))
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- one sweep per run folder


def hold(run: Path, pid: str = "4242") -> int:
    """What a sweep in another process does to the folder: flock run.lock, its pid inside."""
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{pid}\n".encode())
    return fd


def measured_keys(run: Path) -> list[tuple[str, str]]:
    rows = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    return [(r["cell_id"], r["key"]) for r in rows if r["phase"] == "measured"]


def test_a_resume_of_a_folder_another_sweep_holds_is_one_line_and_touches_nothing(tmp_path):
    with FakeServer(total_tokens=4, tokens_per_chunk=2, gap_s=0.0) as server:
        path = endpoint_scenario(tmp_path, server.url)
        first = invoke("sweep", path, "--out", tmp_path / "r")
        assert first.exit_code == 0, first.output
        (run,) = (tmp_path / "r").iterdir()
        with open(run / "cells.jsonl", "ab") as f:
            f.write(b'{"cell_id": "ep-n0", "tru')  # an interrupted run: resume would cut this line
        fd = hold(run)
        try:
            before = snapshot(run)
            line = one_error_line(invoke("sweep", path, "--out", tmp_path / "r", "--resume"))
            assert line == (f"Error: {run}: another orch (pid 4242) is running a sweep in this run folder; wait for "
                            "it to end, or drop --resume to start a new run")
            assert snapshot(run) == before  # not repaired, nothing appended, no report redrawn
        finally:
            os.close(fd)
        again = invoke("sweep", path, "--out", tmp_path / "r", "--resume")  # the holder is gone: it goes on
        assert again.exit_code == 0, again.output
    assert "warning: cells.jsonl: dropped a truncated last line (25 bytes)" in again.output
    keys = measured_keys(run)
    assert len(keys) == 3 and len(set(keys)) == 3


def test_two_sweeps_of_one_folder_at_once_the_second_stops(tmp_path, spawn_orch):
    # A real sweep in another process holds the folder while its slow server answers.
    with FakeServer(total_tokens=8, tokens_per_chunk=1, gap_s=0.25) as server:
        path = endpoint_scenario(tmp_path, server.url)
        out = tmp_path / "r"
        err = open(tmp_path / "first.err", "wb")
        proc = spawn_orch("sweep", str(path), "--out", str(out), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not list(out.glob("hr-*/scenario.toml")):
            assert proc.poll() is None, (tmp_path / "first.err").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (run,) = out.iterdir()
        line = one_error_line(invoke("sweep", path, "--out", out, "--resume"))
        assert proc.poll() is None, "the first sweep ended before the second was tried"
        assert line == (f"Error: {run}: another orch (pid {proc.pid}) is running a sweep in this run folder; "
                        "wait for it to end, or drop --resume to start a new run")
        proc.wait(120)
        err.close()
        assert proc.returncode == 0, (tmp_path / "first.err").read_text()
    keys = measured_keys(run)
    assert len(keys) == 3 and len(set(keys)) == 3  # every request once: no cell ran twice


# ---------------------------------------------------------------- names too long


def test_a_300_character_out_is_one_line_and_exit_2(tmp_path):
    path = endpoint_scenario(tmp_path, "http://127.0.0.1:9")
    long = tmp_path / ("x" * 300)
    for extra in ([], ["--resume"]):
        line = one_error_line(invoke("sweep", path, "--out", long, *extra))
        assert line.startswith(f"Error: --out {str(long)[:40]}...") and "a folder name of 300 bytes" in line
        assert line.endswith("pass a shorter --out")
    line = one_error_line(invoke("bench", "--url", "http://127.0.0.1:9", "--model", "m", "--out", long))
    assert "--out" in line and line.endswith("pass a shorter --out")
    assert list(tmp_path.iterdir()) == [path]


def test_an_out_too_deep_for_the_filesystem_is_one_line_and_exit_2(tmp_path):
    path = endpoint_scenario(tmp_path, "http://127.0.0.1:9")
    deep = tmp_path.joinpath(*["y" * 250] * 17)  # each name fits, the whole path does not
    line = one_error_line(invoke("sweep", path, "--out", deep))
    assert "--out" in line and line.endswith("pass a shorter --out")
    assert list(tmp_path.iterdir()) == [path]


def test_a_scenario_name_too_long_for_a_folder_name_is_refused_at_validate(tmp_path):
    path = endpoint_scenario(tmp_path, "http://127.0.0.1:9")
    path.write_text(path.read_text().replace('name = "hr"', f'name = "{"n" * 300}"', 1))
    for command in (["validate", path], ["sweep", path, "--out", tmp_path / "r"]):
        line = one_error_line(invoke(*command))
        assert line.startswith(f"Error: {path}: name: ") and "at most 64" in line
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- records sized to exhaust memory


def huge_line_run(tmp_path: Path, kind: str) -> Path:
    """requests.jsonl: two rows, a line of 64 MiB (a sparse run of NUL bytes, or 50 MB of JSON text
    that is one string), then two rows more."""
    run = make_run(tmp_path / "run", ROWS, ENGINES)
    head, tail = (b"".join(json.dumps(r).encode() + b"\n" for r in rows) for rows in (ROWS[:2], ROWS[2:]))
    with open(run / "requests.jsonl", "wb") as f:
        f.write(head)
        if kind == "sparse":
            f.seek(64 << 20, os.SEEK_CUR)  # a hole: zeros on reading, no disk used
        else:
            f.write(b'{"cell_id": "e-n0", "text": "')
            block = b"a" * (1 << 20)
            for _ in range(50):
                f.write(block)
            f.write(b'"}')
        f.write(b"\n" + tail)
    return run


def traced_peak(read):
    """What `read()` returns, and the most Python memory it held at once (tracemalloc)."""
    tracemalloc.start()
    try:
        got = read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, peak


@pytest.mark.parametrize("kind", ["sparse", "json"])
def test_a_huge_line_is_skipped_in_bounded_memory(tmp_path, kind):
    run = RunDir(huge_line_run(tmp_path, kind))
    rows, peak = traced_peak(run.request_records)
    assert [(r.cell_id, r.key) for r in rows] == [(r["cell_id"], r["key"]) for r in ROWS]
    assert peak < 3 * MAX_LINE, f"reading a 64 MiB line held {peak >> 20} MiB"
    assert run.warnings == [f"{run.path / 'requests.jsonl'}: skipped 1 of 5 lines (line 3: longer than "
                            f"{MAX_LINE >> 20} MiB, not a line orch writes); kept 4 rows"]


def test_report_on_a_huge_and_junk_requests_file_warns_in_one_line_and_finishes(tmp_path):
    run = huge_line_run(tmp_path, "sparse")
    junk = random.Random(36).randbytes(1 << 20).replace(b"\n", b"") + b"\n"  # binary, then an end of line
    with open(run / "requests.jsonl", "ab") as f:
        f.write(junk + b"\x00\xff\n" * 1000 + json.dumps(req("e-n4", 4, 17.0, key="c")).encode() + b"\n")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning: ")]
    assert warnings == [f"warning: {run / 'requests.jsonl'}: skipped 1002 of 1007 lines (line 3: longer than "
                        f"{MAX_LINE >> 20} MiB, not a line orch writes; line 6: not UTF-8 text; line 7: not UTF-8 "
                        "text; line 8: not UTF-8 text; line 9: not UTF-8 text; and 997 more at lines "
                        f"{', '.join(map(str, range(10, 30)))} and 977 more); kept 5 rows"]
    import pandas as pd

    summary = pd.read_csv(run / "summary.csv")
    assert sorted(summary["requests_ok"]) == [2, 3]  # the five rows kept, in their two cells


def test_junk_lines_by_the_hundred_thousand_cost_a_count_not_a_list(tmp_path):
    run = make_run(tmp_path / "run", ROWS[:1], ENGINES)
    with open(run / "requests.jsonl", "ab") as f:
        f.write(b"\x00\n" * 200_000)
    reader = RunDir(run)
    rows, peak = traced_peak(reader.request_records)
    assert len(rows) == 1 and peak < 4 << 20, f"{peak >> 20} MiB for 200000 junk lines"
    skipped, truncated = reader.warnings
    assert skipped.startswith(f"{run / 'requests.jsonl'}: skipped 199999 of 200000 lines (line 2: not JSON")
    assert "and 199994 more at lines 7, 8, 9, " in skipped and skipped.endswith(" and 199974 more); kept 1 rows")
    assert truncated == f"{run / 'requests.jsonl'}:200001: ignoring a truncated last line; kept 1 rows"


def test_resume_cuts_a_huge_last_line_reading_only_the_files_tail(tmp_path):
    run = RunDir(make_run(tmp_path / "run", ROWS, ENGINES))
    good = (run.path / "requests.jsonl").stat().st_size
    with open(run.path / "requests.jsonl", "ab") as f:
        f.write(b'{"cell_id": "e-n0", "te')
        f.truncate(good + (64 << 20))  # what is left of a 64 MiB line: no newline at its end
    notes, peak = traced_peak(run.repair)
    assert notes == [f"requests.jsonl: dropped a truncated last line ({64 << 20} bytes) left by an interrupted run"]
    assert (run.path / "requests.jsonl").stat().st_size == good
    assert peak < 1 << 20, f"{peak >> 20} MiB to cut one line"


def test_a_huge_environment_json_is_read_only_up_to_its_bound(tmp_path):
    run = make_run(tmp_path / "run", ROWS, ENGINES)
    with open(run / "environment.json", "r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that would be read whole
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert f"warning: {run / 'environment.json'}: larger than 16 MiB, not a file orch writes; the report goes on " \
           "without machine details" in result.output.splitlines()


def test_reading_a_huge_line_in_a_process_of_its_own_stays_small(tmp_path):
    """Measured by the kernel: the peak resident memory of reading the records with a 50 MB line
    is within a few MAX_LINE of reading the same run without it."""
    plain = make_run(tmp_path / "plain" / "run", ROWS, ENGINES)
    huge = huge_line_run(tmp_path / "huge", "json")

    def peak_kib(run: Path) -> int:
        # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (pytest's) into ru_maxrss
        code = ("from orchestrator.results.rundir import RunDir\n"
                f"RunDir({str(run)!r}).request_records()\n"
                "print(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1])")
        done = subprocess.run([ORCH[0], "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    grew = peak_kib(huge) - peak_kib(plain)
    assert grew < 3 * (MAX_LINE >> 10), f"{grew >> 10} MiB more for a 50 MB line"
