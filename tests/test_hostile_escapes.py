"""Terminal escapes from a server or a file are shown, never obeyed (issue 36).

A server's error body, model name, /metrics labels, stream text or log, a prompt file, a scenario
or a run folder's records may carry ESC ] 0;title BEL (retitles the terminal), ESC [2J (clears
it), CSI as the one character U+009B, a carriage return, or a newline that forges a line of orch's
own. Whatever orch prints (stdout, stderr, progress lines) and whatever it writes into the report
(report/summary.md, report/index.html, the SVG charts) carries them as visible escapes
(`\\x1b`); the records keep the raw text, JSON-escaped (C1 too), so `cat` or `tail` of a
run folder's file obeys nothing either. Only the server's own log (cells/*/server*.log) is the
server's bytes as it wrote them.
"""

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner
from rich.console import Console

from orchestrator.cli import cli
from orchestrator.common.show import escape_raw_controls, printable
from orchestrator.launch.doctor import Check, format_checks
from orchestrator.progress import (BuildProgress, ParallelProgress, PlainBuildProgress, PlainSweepProgress,
                                   SweepProgress)

from .support.runs import CELLS, make_run, req
from .support.threaded_server import ThreadedApp

# A title, a screen clear, a one-character CSI, a carriage return and a forged line.
EVIL = "\x1b]0;pwned\x07\x1b[2J\nforged line\x9b31m\r"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"  # how EVIL's start reads once escaped
# What no terminal line of orch's and no report file may hold raw (newline and tab may stand).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def raw_in(text: str) -> list[str]:
    return sorted({ascii(c) for c in RAW.findall(text)})


def forged(text: str) -> bool:
    """A line of output that a server's newline started."""
    return any(line.lstrip().startswith("forged") for line in text.splitlines())


def written(run: Path) -> dict[str, str]:
    """Every file orch wrote in a run folder (the PNGs and the server's own logs aside)."""
    return {str(p.relative_to(run)): p.read_bytes().decode("utf-8", errors="replace") for p in sorted(run.rglob("*"))
            if p.is_file() and p.suffix != ".png" and not (p.parent.parent.name == "cells" and p.suffix == ".log")}


def assert_clean(output: str, run: Path | None = None) -> None:
    assert not raw_in(output), (raw_in(output), output)
    assert not forged(output), output
    for name, text in (written(run) if run else {}).items():
        assert not raw_in(text), (name, raw_in(text))


# ---------------------------------------------------------------- the function itself


def test_printable_shows_every_control_character_and_keeps_the_rest():
    every = "".join(map(chr, range(0x20))) + "\x7f" + "".join(map(chr, range(0x80, 0xa0)))
    for lines in (False, True):
        shown = printable("ok é😀 " + every + "\u2028\u202e\udcff", lines=lines)
        assert not raw_in(shown.replace("\n", "").replace("\t", ""))
        assert shown.startswith("ok é😀 ") and "\t" in shown  # printable text and tabs stay
        assert "\\x1b" in shown and "\\x9b" in shown and "\\r" in shown and "\\u202e" in shown
        assert "\\udcff" in shown and "\\u2028" in shown
        shown.encode("utf-8")  # a lone surrogate, escaped, can be printed
    assert printable("a\nb") == "a\\nb" and printable("a\nb", lines=True) == "a\nb"
    assert printable(Path("/x\x1b")) == "/x\\x1b"


@pytest.mark.parametrize("text", [EVIL, "\x7f\x85\u2028\u202e", "plain"])
def test_records_keep_the_raw_text_escaped_as_json_and_toml_escape_it(text):
    import tomllib

    import tomli_w

    line = escape_raw_controls(json.dumps({"error": text}, ensure_ascii=False))
    assert json.loads(line) == {"error": text} and not raw_in(line)
    toml = escape_raw_controls(tomli_w.dumps({"model": text, "args": [text]}))
    assert tomllib.loads(toml) == {"model": text, "args": [text]} and not raw_in(toml)


# ---------------------------------------------------------------- a server that says escapes


def escaping_server(mode: str):
    """Its model name, /metrics labels and either its error bodies ("error": every completion an
    HTTP 500) or its stream text ("stream") carry EVIL."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "m" + EVIL}]})
        if request.path == "/metrics":
            label = EVIL.replace("\n", " ").replace('"', "")
            return web.Response(text=f'# TYPE x counter\nx_total{{why="{label}"}} 1\n')
        if request.method == "GET":
            return web.json_response({"status": "ok" + EVIL})
        if mode == "error":
            return web.Response(status=500, text="boom" + EVIL)
        events = [{"choices": [{"index": 0, "text": " a" + EVIL, "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": " b", "finish_reason": "length"}]},
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return web.Response(body=body.encode(), content_type="text/event-stream")
    return handler


def bench(url: str, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["bench", "--url", url, "--api", "completions", "--out", str(out),
                                    "--set", "workload.max_tokens=2", "--set", "workload.warmup=1", *extra])


@pytest.mark.parametrize("mode", ["error", "stream"])
def test_a_server_that_says_escapes_is_shown_escaped_on_the_terminal_and_in_the_report(tmp_path, mode):
    with ThreadedApp(escaping_server(mode)) as server:
        result = bench(server.url, tmp_path / "r")
    assert result.exit_code == (1 if mode == "error" else 0), result.output
    (run,) = (tmp_path / "r").iterdir()
    assert_clean(result.output, run)
    for name in ("report/summary.md", "report/index.html"):
        assert "m" + SHOWN in (run / name).read_text()  # the model name, seen for what it is
    rows = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    (cell,) = [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]
    assert cell["model"].startswith("m\x1b]0;pwned\x07")  # the record keeps the name as the server gave it
    if mode == "error":
        # The record keeps what the server said; the terminal shows it escaped, on the cell's one line.
        assert cell["status"] == "failed" and "boom" + EVIL.rstrip("\r") in cell["error"]
        assert all(not r["ok"] and "boom\x1b]0;pwned\x07" in r["error"] for r in rows)
        assert f"boom{SHOWN}\\nforged line\\x9b31m" in result.output
    else:
        assert all(r["ok"] and r["text"].startswith(" a" + EVIL) for r in rows)


def test_a_model_lookup_or_readiness_answer_with_escapes_is_one_line(tmp_path):
    async def handler(request):
        return web.Response(status=503 if request.method == "GET" else 500, text="down" + EVIL)
    with ThreadedApp(handler) as server:
        lookup = bench(server.url, tmp_path / "a")
        ready = bench(server.url, tmp_path / "b", "--model", "m" + EVIL, "--set", "engines.0.ready_timeout_s=1")
    assert lookup.exit_code == 1 and lookup.output.startswith("Error: ") and lookup.output.count("\n") == 1
    assert_clean(lookup.output)
    assert ready.exit_code == 1
    assert_clean(ready.output, next((tmp_path / "b").iterdir()))


def test_a_servers_log_with_escapes_stays_in_its_file_and_reaches_the_terminal_escaped(tmp_path):
    # A local server that writes escapes and exits during start-up; its args carry them as well.
    fake = tmp_path / "fake-server"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({EVIL!r} + '\\n')\nsys.exit(3)\n")
    fake.chmod(0o755)
    (tmp_path / "m.gguf").write_bytes(b"")
    path = tmp_path / "esc.toml"
    path.write_text(f'name = "esc"\n[workload]\nprompts = ["repeat"]\nmax_tokens = 4\nwarmup = 1\nrepeats = 1\n'
                    f'[[engines]]\nname = "fake"\nkind = "llama-server"\nmodel = "{tmp_path / "m.gguf"}"\n'
                    f'api = "completions"\nbinary = "{fake}"\nargs = ["--alias", {json.dumps("a" + EVIL)}]\n'
                    f'ready_timeout_s = 5\n[engines.speculation]\nmethod = "ngram-mod"\nn_spec = [0]\n')
    dry = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert_clean(dry.output)
    assert f"--alias 'a{SHOWN}\\nforged line\\x9b31m\\r'" in dry.output  # the command on one line
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    (run,) = (tmp_path / "r").iterdir()
    assert_clean(result.output, run)
    (cell,) = [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]
    assert "\x1b]0;pwned\x07" in cell["log_tail"]  # the record keeps the tail, JSON-escaped
    assert "\x1b]0;pwned\x07" in (run / "cells" / "fake-n0" / "server.log").read_text()  # the server's own bytes


# ---------------------------------------------------------------- files that say escapes


def hostile_run(tmp_path: Path, name: str = "") -> Path:
    """A run folder whose records quote a server's escapes: error bodies, output text (a divergence
    the report quotes), the model name and version, a log tail, and a junk line; with `name`, the
    prompt set's and the engine's names say them too."""
    rows = [req("e-n0", 0, 10.0, key="p1"), req("e-n4", 4, 12.0, key="p1"),
            {**req("e-n4", 4, 0, ok=False, key="p2"), "error": "HTTP 500: " + EVIL}]
    rows[0]["text"], rows[1]["text"] = "same " + EVIL, "other " + EVIL
    cells = [{**c, "error": "server said " + EVIL, "log_tail": EVIL} for c in CELLS]
    for r in rows + cells:
        r["engine"] = "e" + name
    for r in rows:
        r["prompt_set"] += name
    run = make_run(tmp_path / "run", rows, {"e" + name: {"model": "m" + EVIL, "version": "v" + EVIL}})
    env = json.loads((run / "environment.json").read_text())
    (run / "environment.json").write_text(json.dumps({**env, "cpu": "cpu" + EVIL}))
    (run / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    with open(run / "requests.jsonl", "a") as f:
        f.write('{"cell_id": "e-n0", "junk": "' + EVIL.replace("\n", "").replace("\r", "") + '"\n')  # a bad line
    return run


RECORDS = ("requests.jsonl", "cells.jsonl")  # as the test wrote them: JSON-escaped, not orch's to rewrite


def test_a_run_folder_whose_records_say_escapes_is_reported_escaped(tmp_path):
    run = hostile_run(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    for name, text in written(run).items():  # the report, the SVG charts, the tables
        assert name in RECORDS or not raw_in(text), (name, raw_in(text))
    md = (run / "report" / "summary.md").read_text()
    # In a table cell "[" and "]" are Markdown-escaped as well: "\x1b\]0;pwned\x07\x1b\[2J".
    assert "m" + SHOWN in md and "other \\x1b\\]0;pwned\\x07" in md and not forged(md)
    assert "other " + SHOWN in (run / "report" / "index.html").read_text()


def test_names_in_the_records_that_say_escapes_are_read_back_escaped(tmp_path):
    # Engine, cell and prompt-set names and labels fill the terminal's tables and advice lines, the
    # report, the charts' titles and legends: read back with their control characters shown, none
    # forges a line, and matplotlib has no glyph to miss.
    run = hostile_run(tmp_path, EVIL)
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert "e" + SHOWN in result.output
    for name, text in written(run).items():
        assert name in RECORDS or not raw_in(text), (name, raw_in(text))
    for name in ("report/summary.md", "report/index.html"):
        assert not forged((run / name).read_text()), name
    assert "seeds" + SHOWN in (run / "report" / "index.html").read_text()
    other = tmp_path / "other"
    shutil.copytree(run, other)
    compared = CliRunner().invoke(cli, ["compare", str(run), str(other), "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    assert_clean(compared.output, tmp_path / "cmp")
    assert "e" + SHOWN in compared.output


@pytest.mark.parametrize("bad_id", [False, True])
def test_a_prompt_file_that_says_escapes_is_shown_escaped_in_one_line(tmp_path, bad_id):
    # Escapes in the prompt text (sent as it is), in the file's and the scenario's names, and in
    # an id (refused: ids label tables).
    folder = tmp_path / ("d" + EVIL)
    folder.mkdir()
    prompts = folder / f"p{EVIL}.jsonl"
    entries = [{"id": "a", "prompt": "hi " + EVIL}] + ([{"id": "b" + EVIL, "prompt": "x"}] if bad_id else [])
    prompts.write_text("".join(json.dumps(e) + "\n" for e in entries))
    path = folder / f"s{EVIL}.toml"
    path.write_text(f'name = "s"\n[workload]\nprompts = [{{ source = {json.dumps(str(prompts))} }}]\n[[engines]]\n'
                    'name = "e"\nkind = "endpoint"\nlauncher = "external"\nurl = "http://127.0.0.1:9"\nmodel = "m"\n')
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == (2 if bad_id else 0), result.output
    assert result.output.count("\n") == 1 and SHOWN in result.output
    assert_clean(result.output)


@pytest.mark.parametrize("case", ["name", "path", "key"])
def test_a_scenario_that_says_escapes_is_refused_in_one_line(tmp_path, case):
    good = 'name = "s"\n[[engines]]\nname = "e"\nkind = "endpoint"\nlauncher = "external"\nurl = "http://127.0.0.1:9"\nmodel = "m"\n'
    path = tmp_path / "s.toml"
    if case == "name":
        path.write_text(good.replace('name = "s"', f"name = {json.dumps(EVIL)}"))
    elif case == "key":
        path.write_text(good + f"{json.dumps(EVIL)} = 1\n")
    else:
        path = tmp_path / f"s{EVIL}.toml"  # no such file: the message names the path
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert_clean(result.output)


# ---------------------------------------------------------------- every display, one line each


class Rec:
    phase, ok, e2e_tok_s, cell_id = "measured", False, None, "c"


def test_every_progress_display_prints_a_servers_words_escaped_on_one_line():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=400)
    for progress in (SweepProgress(console), PlainSweepProgress(console)):
        with progress:
            progress.cell_started(1, 1, "c", 1)
            progress.phase("warm-up")
            progress.warn("host " + EVIL)
            progress.request_done(Rec())
            progress.cell_finished("failed", "HTTP 500: " + EVIL)
    side = ParallelProgress(console)
    side.cell_started("c", "node" + EVIL, "gpu0", 1, 1)
    side.warn(EVIL)
    side.cell_finished("c", "failed", "HTTP 500: " + EVIL, 1.0)
    for build in (BuildProgress(console), PlainBuildProgress(console)):
        with build:
            build.step("compiling " + EVIL)
    text = buf.getvalue()
    assert text.count(SHOWN) >= 8
    assert_clean(text)


def test_doctor_shows_what_docker_or_nvidia_smi_said_escaped():
    text = format_checks([Check("docker", True, "server 27" + EVIL), Check("GPUs", False, EVIL, "fix it")])
    assert text.count("\n") == 2 and SHOWN in text
    assert_clean(text)
