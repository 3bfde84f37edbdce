"""Inputs sized to exhaust memory (issue 36): a plan of 10^12 repeats or warm-ups, prompt files of
hundreds of MB, a parquet file of a few KB that decodes to gigabytes. Each is refused at validate
in one line naming the file, the field and the fix (exit 2), quickly and in bounded memory, or
streamed in bounded memory; the limits are README's "Limits".

Memory is measured as the real CLI's peak RSS (a subprocess, so that Arrow's allocations count
too, which tracemalloc does not see), against the same CLI validating a small good scenario."""

import gzip
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.measure.prompt_files import (MAX_FILE_BYTES, MAX_PROMPT_BYTES, MAX_PROMPTS, MAX_TEXT_BYTES,
                                               PromptFileError, read_file)
from orchestrator.types.scenario import MAX_REQUESTS

ROOT = Path(__file__).parents[1]
FIX = Path(__file__).parent / "fixtures" / "prompt_sets"
GROWTH_KB = 200 << 10  # what a refused or streamed input may add to the CLI's peak RSS
SECONDS = 30  # the CLI's start on a busy 2-core machine is most of it

# The CLI in a process of its own; its peak RSS (KB) written to the file named first.
MEASURED = """
import resource, sys
out = sys.argv.pop(1)
try:
    from orchestrator.cli import cli
    cli.main(sys.argv[1:], prog_name="orch")
finally:
    with open(out, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""

SCENARIO = """
name = "big"
[workload]
prompts = {prompts}
{workload}
[[engines]]
name = "e"
kind = "endpoint"
launcher = "external"
url = "http://127.0.0.1:9"
model = "m"
"""


def _scenario(tmp_path: Path, prompts='["seeds"]', workload: str = "", name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(SCENARIO.format(prompts=prompts, workload=workload))
    return path


def _orch(tmp_path: Path, *args: str) -> tuple[int, list[str], int, float]:
    """exit code, output lines, peak RSS in KB, seconds."""
    rss = tmp_path / f"rss-{time.monotonic_ns()}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", MEASURED, str(rss), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    seconds = time.monotonic() - started
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines(), int(rss.read_text()), seconds


@pytest.fixture(scope="module")
def baseline_kb(tmp_path_factory) -> int:
    """The CLI's peak RSS validating a small good scenario that reads a parquet file (so Arrow is
    loaded in both)."""
    tmp = tmp_path_factory.mktemp("baseline")
    path = _scenario(tmp, f'["seeds", "{FIX / "speed-bench-qualitative.parquet"}"]')
    code, lines, kb, _ = _orch(tmp, "validate", str(path))
    assert code == 0, lines
    return kb


def _refused(tmp_path, baseline_kb, args, message):
    code, lines, kb, seconds = _orch(tmp_path, *args)
    assert (code, lines) == (2, [message])
    assert kb - baseline_kb < GROWTH_KB, f"peak RSS grew {(kb - baseline_kb) >> 10} MiB"
    assert seconds < SECONDS


COMMANDS = {"validate": ["validate"], "dry-run": ["sweep", "--dry-run", "--out", "OUT"]}


def _args(command: str, path: Path, tmp_path: Path) -> list[str]:
    return [a.replace("OUT", str(tmp_path / "results")) for a in COMMANDS[command]] + [str(path)]


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("key", ["repeats", "warmup"])
def test_10_to_the_12_repeats_or_warmups_are_refused_at_once_in_bounded_memory(tmp_path, baseline_kb, key, command):
    path = _scenario(tmp_path, workload=f"{key} = 1_000_000_000_000")
    _refused(tmp_path, baseline_kb, _args(command, path, tmp_path),
             f"Error: {path}: workload.{key}: 1,000,000,000,000 is more than the 100,000 requests one sweep may "
             "plan; use at most 100,000 (README, Limits)")
    assert not (tmp_path / "results").exists()


def test_max_repeats_of_10_to_the_12_is_refused_too(tmp_path):
    path = _scenario(tmp_path, workload="target_ci = 0.03\nmax_repeats = 1_000_000_000_000")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert (result.exit_code, result.output) == (2, f"Error: {path}: workload.max_repeats: 1,000,000,000,000 is more "
                                                    "than the 100,000 requests one sweep may plan; use at most 100,000 "
                                                    "(README, Limits)\n")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_plan_past_100000_requests_is_refused_naming_its_product(tmp_path, command, no_processes):
    """Each number within bounds, their product (8 seeds x 2,500 repeats x 3 levels, 2 starts)
    not: refused, with what makes it up and what to lower."""
    assert MAX_REQUESTS == 100_000
    path = _scenario(tmp_path, workload="repeats = 2500\nconcurrency = [1, 2, 4]\nblocks = 2\nwarmup = 3")
    result = CliRunner().invoke(cli, _args(command, path, tmp_path))
    assert (result.exit_code, result.output) == (2, (
        f"Error: {path}: workload: plans 120,006 requests (2 server starts x (3 warm-up + 8 prompts x 2500 repeats x 3 "
        "concurrency levels)), more than the 100,000 of one sweep; sample fewer prompts (per_category, ids), lower "
        "repeats or warmup, or list fewer concurrency levels, n_spec depths or blocks\n"))
    assert not (tmp_path / "results").exists()


def test_a_plan_at_the_bound_validates(tmp_path):
    # 2 starts x (0 warm-up + 8 prompts x 3,125 repeats x 2 levels) = 100,000; one warm-up more does not
    path = _scenario(tmp_path, workload="repeats = 3125\nconcurrency = [1, 2]\nblocks = 2\nwarmup = 0")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert (result.exit_code, result.output) == (0, f"{path}: ok (1 engine(s), 2 cells)\n")
    result = CliRunner().invoke(cli, ["validate", str(path), "--set", "workload.warmup=1"])
    assert result.exit_code == 2 and "plans 100,002 requests" in result.output


def test_target_ci_counts_the_repeats_it_may_add(tmp_path):
    path = _scenario(tmp_path, workload="repeats = 2\ntarget_ci = 0.03\nmax_repeats = 20000")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "8 prompts x 20000 repeats (target_ci's cap, max_repeats) x 1 concurrency levels" in result.output


def test_a_long_n_spec_list_is_refused_in_linear_time(tmp_path):
    """100,000 depths: the duplicate check was quadratic (hours); now the plan bound refuses it."""
    depths = ", ".join(str(n) for n in range(100_000))
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(prompts='["seeds"]', workload="")
                    + f'[engines.speculation]\nmethod = "x"\nn_spec = [{depths}]\n')
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert time.monotonic() - started < 10
    assert result.exit_code == 2 and result.output.startswith(f"Error: {path}: workload: plans 900,000 requests")


# ---------------------------------------------------------------- JSONL prompt files


def _prompts_entry(path: Path) -> str:
    return f'["{path}"]'


def test_a_200_MB_line_is_refused_at_16_MiB_unread(tmp_path, baseline_kb):
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB with no line break
    path = _scenario(tmp_path, _prompts_entry(big))
    _refused(tmp_path, baseline_kb, ["validate", str(path)],
             f"Error: {path}: workload.prompts[0]: {big}:1: a line longer than 16 MiB, more than one prompt may hold; "
             "shorten it or remove the line")


def test_a_file_past_100000_prompts_is_refused_where_it_passes(tmp_path, baseline_kb):
    big = tmp_path / "many.jsonl"
    with big.open("wb") as f:
        f.write(b'{"prompt": "say hi"}\n' * (MAX_PROMPTS + 1))
        f.truncate(200 << 20)  # a 200 MB file whose rest is never read
    path = _scenario(tmp_path, _prompts_entry(big))
    _refused(tmp_path, baseline_kb, ["validate", str(path)],
             f"Error: {path}: workload.prompts[0]: {big}: 100,001 prompts by line 100001, more than the 100,000 "
             "prompts orch reads from one file; sample the prompts you need into a smaller file")


def test_a_2_GiB_file_is_refused_from_its_size(tmp_path):
    big = tmp_path / "huge.jsonl"
    with big.open("wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(PromptFileError) as err:
        read_file(big, None, "first")
    assert str(err.value) == (f"{big}: 2048 MiB, more than the 1024 MiB orch reads; sample the prompts you need "
                              "into a smaller file")


def test_a_200_MB_file_streams_in_bounded_memory(tmp_path, baseline_kb):
    """Long blank lines around three prompts: read a line at a time, the file is never whole in
    memory (reading it whole, decoding and splitting held three copies: 600 MB)."""
    big = tmp_path / "padded.jsonl"
    blank = b" " * (15 << 20) + b"\n"
    with big.open("wb") as f:
        f.write(b'{"id": "a", "prompt": "one"}\n')
        for _ in range(13):
            f.write(blank)
        f.write(b'{"id": "b", "prompt": "two"}\n{"id": "c", "prompt": "three"}\n')
    assert big.stat().st_size > 190 << 20
    path = _scenario(tmp_path, _prompts_entry(big))
    code, lines, kb, seconds = _orch(tmp_path, "validate", str(path))
    assert (code, lines) == (0, [f"{path}: ok (1 engine(s), 1 cells)"])
    assert kb - baseline_kb < GROWTH_KB, f"peak RSS grew {(kb - baseline_kb) >> 10} MiB"
    assert seconds < SECONDS
    assert [p.id for p in read_file(big, None, "first")] == ["a", "b", "c"]


def test_a_gzip_that_expands_past_1_GiB_is_refused_as_it_is_read(tmp_path, baseline_kb):
    big = tmp_path / "bomb.jsonl.gz"
    blank = b" " * (15 << 20) + b"\n"
    member = gzip.compress(blank, compresslevel=1)  # one member, repeated: gzip reads every member
    big.write_bytes(member * (MAX_FILE_BYTES // len(blank) + 2))
    assert big.stat().st_size < 8 << 20
    path = _scenario(tmp_path, _prompts_entry(big))
    _refused(tmp_path, baseline_kb, ["validate", str(path)],
             f"Error: {path}: workload.prompts[0]: {big}: expands past 1024 MiB; sample the prompts you need into a "
             "smaller file")


# ---------------------------------------------------------------- parquet


def _dictionary(n: int, text: str):
    """n rows of one string, as Arrow's dictionary: built without the n copies."""
    import numpy as np
    import pyarrow as pa
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([text]))


def _bomb(path: Path, n: int, text: str, turns: bool = False) -> Path:
    """A small parquet file (dictionary pages, zstd, no Arrow schema stored, so a reader gets plain
    strings back unless it asks for dictionaries) of n rows of one string."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    ids = pa.array([f"q{i}" for i in range(n)])
    if turns:
        table = pa.table({"question_id": ids, "category": _dictionary(n, "coding"),
                          "sub_category": _dictionary(n, "python"),
                          "turns": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                            _dictionary(n, text))})
    else:
        table = pa.table({"id": ids, "prompt": _dictionary(n, text)})
    pq.write_table(table, path, compression="zstd", store_schema=False)
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("turns", [False, True], ids=["prompt", "turns"])
def test_a_small_parquet_that_decodes_to_gigabytes_is_refused_in_bounded_memory(tmp_path, baseline_kb, turns,
                                                                                 command):
    """50,000 rows of one 64 KiB string: 3.3 GB decoded from a file of about 120 KB. Its rows'
    sizes are counted from the dictionary before any becomes text."""
    bomb = _bomb(tmp_path / "bomb.parquet", 50_000, "x" * (64 << 10), turns)
    assert bomb.stat().st_size < 200 << 10
    path = _scenario(tmp_path, _prompts_entry(bomb))
    code, lines, kb, seconds = _orch(tmp_path, *_args(command, path, tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(rf"Error: {re.escape(str(path))}: workload\.prompts\[0\]: {re.escape(str(bomb))}: its prompts "
                        r"pass 512 MiB of text by row \d+; sample the prompts you need into a smaller file", lines[0])
    assert kb - baseline_kb < GROWTH_KB, f"peak RSS grew {(kb - baseline_kb) >> 10} MiB"
    assert seconds < SECONDS
    assert not (tmp_path / "results").exists()


def test_the_bomb_refused_names_the_row_where_the_text_passes_the_bound(tmp_path):
    bomb = _bomb(tmp_path / "bomb.parquet", 50_000, "x" * (64 << 10))
    with pytest.raises(PromptFileError) as err:
        read_file(bomb, None, "first")
    # every column read counts: the 64 KiB prompt and its id ("q0" ...)
    row = total = 0
    while total <= MAX_TEXT_BYTES:
        total += len(f"q{row}") + (64 << 10)
        row += 1
    assert str(err.value) == (f"{bomb}: its prompts pass 512 MiB of text by row {row}; sample the prompts you need "
                              "into a smaller file")


def test_one_parquet_row_past_16_MiB_is_refused(tmp_path):
    bomb = _bomb(tmp_path / "row.parquet", 3, "y" * (MAX_PROMPT_BYTES + 1))
    with pytest.raises(PromptFileError) as err:
        read_file(bomb, None, "first")
    assert str(err.value) == (f"{bomb} row 1: 16 MiB of text, more than one prompt may hold (16 MiB); shorten it or "
                              "remove the row")


def test_many_turns_of_one_repeated_string_in_one_row_are_counted(tmp_path):
    """One row whose turns repeat a 1 MiB string 64 times: 64 MiB in that row alone."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    turns = pa.ListArray.from_arrays(pa.array(np.array([0, 64], np.int32)), _dictionary(64, "z" * (1 << 20)))
    path = tmp_path / "turns.parquet"
    pq.write_table(pa.table({"question_id": ["q0"], "category": ["c"], "turns": turns}), path, compression="zstd",
                   store_schema=False)
    with pytest.raises(PromptFileError) as err:
        read_file(path, None, "first")
    assert str(err.value).startswith(f"{path} row 1: 64 MiB of text, more than one prompt may hold")


def test_a_parquet_of_more_than_100000_rows_is_refused_from_its_footer(tmp_path):
    bomb = _bomb(tmp_path / "rows.parquet", MAX_PROMPTS + 1, "hi")
    with pytest.raises(PromptFileError) as err:
        read_file(bomb, None, "first")
    assert str(err.value) == (f"{bomb}: 100,001 rows, more than the 100,000 prompts orch reads from one file; "
                              "sample the prompts you need into a smaller file")


def test_a_parquet_column_of_an_unexpected_nested_type_is_refused_before_decoding(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "struct.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": pa.array([{"text": "hi"}])}), path)
    with pytest.raises(PromptFileError) as err:
        read_file(path, None, "first")
    assert str(err.value) == (f'{path}: column "prompt" holds struct<text: string>, which no prompt file has; '
                              "write it as strings (or a list of strings for turns)")


def test_a_good_parquet_still_reads_through_dictionaries(tmp_path):
    """A real-sized set of distinct prompts (dictionary pages falling back to plain ones) reads
    back value for value."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 5000
    path = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "prompt": [f"prompt {i} " * 50 for i in range(n)],
                             "category": [["a", "b", None][i % 3] for i in range(n)]}), path)
    items = read_file(path, None, "first")
    assert [(it.id, it.text, it.category) for it in items] == [
        (f"p{i}", f"prompt {i} " * 50, ["a", "b", None][i % 3]) for i in range(n)]
