import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.measure.prompts import PromptFileError, load_prompt_set
from orchestrator.types.scenario import MAX_ID_CHARS

FIX = 'write each line as {"id": "q1", "prompt": "..."}'


def _file(tmp_path, data: bytes | str, name: str = "set.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _error(path: Path) -> str:
    with pytest.raises(PromptFileError) as err:
        load_prompt_set(str(path))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_good_file_loads_with_ids_defaulting_to_the_line(tmp_path):
    path = _file(tmp_path, '{"id": "q1", "prompt": "a"}\n\n{"prompt": "b"}\n{"id": 7, "prompt": "c"}\n')
    prompts = load_prompt_set(str(path))
    assert [(p.set, p.id, p.text) for p in prompts] == [("set", "q1", "a"), ("set", "3", "b"), ("set", "7", "c")]


def test_a_byte_order_mark_and_crlf_lines_are_fine(tmp_path):
    path = _file(tmp_path, b'\xef\xbb\xbf{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    assert [p.text for p in load_prompt_set(str(path))] == ["a", "b"]


def test_a_line_separator_inside_a_prompt_does_not_split_the_line(tmp_path):
    path = _file(tmp_path, '{"prompt": "one\u2028two\u0085three"}\n')
    assert [p.text for p in load_prompt_set(str(path))] == ["one\u2028two\u0085three"]


@pytest.mark.parametrize("data, byte, offset", [
    (b'{"prompt": "ok"}\n\xff\xfe{"prompt": "x"}\n', "0xff", 17),
    (b'\xff\xfe{\x00"\x00', "0xff", 0),  # UTF-16, as some editors save
    (b'{"prompt": "caf\xe9"}\n', "0xe9", 15),  # Latin-1
])
def test_not_utf8(tmp_path, data, byte, offset):
    path = _file(tmp_path, data)
    assert _error(path) == f"{path}: not UTF-8 text (byte {byte} at offset {offset}); save it as UTF-8"


@pytest.mark.parametrize("value, got", [("42", "42"), ("null", "null"), ("[]", "an array"),
                                        ('{"text": "x"}', "an object"), ("true", "true"), ("1.5", "1.5")])
def test_prompt_must_be_a_string(tmp_path, value, got):
    path = _file(tmp_path, '{"prompt": "fine"}\n{"id": "b", "prompt": %s}\n' % value)
    assert _error(path) == f'{path}:2: "prompt" must be a string (got {got}); put the text in quotes'


@pytest.mark.parametrize("value", ['""', '"   "', '"\\n\\t"'])
def test_prompt_must_not_be_empty(tmp_path, value):
    path = _file(tmp_path, '{"prompt": %s}\n' % value)
    assert _error(path) == f'{path}:1: "prompt" is empty; give it some text or remove the line'


def test_missing_prompt_key(tmp_path):
    path = _file(tmp_path, '{"id": "a", "text": "x"}\n')
    assert _error(path) == f'{path}:1: no "prompt" key; {FIX}'


@pytest.mark.parametrize("value, got", [("null", "null"), ("1.5", "1.5"), ("1.0", "1.0"), ("[1]", "an array"),
                                        ("true", "true"), ("false", "false"), ('{"a": 1}', "an object")])
def test_id_must_be_a_string_or_an_integer(tmp_path, value, got):
    path = _file(tmp_path, '{"id": %s, "prompt": "x"}\n' % value)
    assert _error(path) == (f'{path}:1: "id" must be a string or an integer (got {got}); '
                            'use e.g. "id": "q1", or leave it out to use the line number')


def test_id_length_is_bounded(tmp_path):
    ok = "x" * MAX_ID_CHARS
    assert load_prompt_set(str(_file(tmp_path, '{"id": "%s", "prompt": "p"}\n' % ok)))[0].id == ok
    path = _file(tmp_path, '{"id": "%s", "prompt": "p"}\n' % (ok + "x"), "long.jsonl")
    assert _error(path) == f'{path}:1: "id" has 201 characters; use an id of 1 to 200'
    path = _file(tmp_path, '{"id": "", "prompt": "p"}\n', "empty.jsonl")
    assert _error(path) == f'{path}:1: "id" has 0 characters; use an id of 1 to 200'
    path = _file(tmp_path, '{"id": %s, "prompt": "p"}\n' % ("9" * 300), "digits.jsonl")
    assert _error(path) == f'{path}:1: "id" has 300 characters; use an id of 1 to 200'


def test_ids_with_unsafe_characters_are_fine(tmp_path):
    # Ids never become paths; they only label request rows.
    ids = ["../../etc/passwd", "a/b", "$(rm -rf /)", "💥"]
    lines = "".join('{"id": %s, "prompt": "p"}\n' % json.dumps(i) for i in ids)
    assert [p.id for p in load_prompt_set(str(_file(tmp_path, lines)))] == ids


@pytest.mark.parametrize("pid", ["x\ny", "a\u001b[31mred", "tab\there"])
def test_ids_with_a_line_break_or_control_character_are_refused(tmp_path, pid):
    # They label rows of the terminal's tables and the Markdown report, where they would break lines.
    path = _file(tmp_path, '{"id": %s, "prompt": "p"}\n' % json.dumps(pid))
    bad = next(c for c in pid if not c.isprintable())
    assert _error(path) == f'{path}:1: "id" holds {ascii(bad)}, a line break or control character; use printable text'


@pytest.mark.parametrize("lines, n, pid, k", [
    ('{"id": "x", "prompt": "a"}\n{"id": "y", "prompt": "b"}\n{"id": "x", "prompt": "c"}\n', 3, "x", 1),
    ('{"id": 3, "prompt": "a"}\n{"id": "3", "prompt": "b"}\n', 2, "3", 1),  # 3 and "3" are one id
    ('{"id": 2, "prompt": "a"}\n{"prompt": "b"}\n', 2, "2", 1),  # a missing id is the line number
    ('{"prompt": "a"}\n{"id": "1", "prompt": "b"}\n', 2, "1", 1),
])
def test_duplicate_ids(tmp_path, lines, n, pid, k):
    path = _file(tmp_path, lines)
    assert _error(path) == f"{path}:{n}: id '{pid}' already used on line {k}; give each prompt its own id"


@pytest.mark.parametrize("line, got", [("[1, 2]", "an array"), ('"just text"', "a string"), ("3", "3"),
                                       ("null", "null")])
def test_a_line_that_is_not_an_object(tmp_path, line, got):
    path = _file(tmp_path, '{"prompt": "a"}\n' + line + "\n")
    assert _error(path) == f"{path}:2: got {got}, not a JSON object; {FIX}"


@pytest.mark.parametrize("line", ['{"prompt": "a"', "prompt: a", '{"prompt": "a"} {"prompt": "b"}', "{'prompt': 'a'}"])
def test_a_line_that_is_not_json(tmp_path, line):
    path = _file(tmp_path, line + "\n")
    message = _error(path)
    assert message.startswith(f"{path}:1: not valid JSON (") and message.endswith(f"); {FIX}")


def test_hostile_json_is_one_line(tmp_path):
    path = _file(tmp_path, "[" * 100_000 + "]" * 100_000 + "\n")
    assert _error(path) == f"{path}:1: JSON nested too deeply; {FIX}"
    path = _file(tmp_path, '{"id": %s, "prompt": "p"}\n' % ("9" * 5000), "bigint.jsonl")
    assert _error(path).startswith(f"{path}:1: not valid JSON (Exceeds the limit")


def test_an_unpaired_surrogate_is_refused(tmp_path):
    path = _file(tmp_path, '{"prompt": "a\\ud800b"}\n')
    assert _error(path) == (f'{path}:1: "prompt" holds an unpaired surrogate (\'\\ud800\'); '
                            'remove it or complete its \\uD8xx\\uDCxx pair')
    pair = _file(tmp_path, '{"prompt": "a\\ud83d\\ude00b"}\n', "pair.jsonl")
    assert load_prompt_set(str(pair))[0].text == "a\U0001F600b"


def test_an_empty_file(tmp_path):
    path = _file(tmp_path, "\n  \n")
    assert _error(path) == f"{path} holds no prompts; {FIX}"


def test_a_folder_named_like_a_prompt_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.mkdir()
    assert _error(path) == f"{path}: cannot read it (Is a directory); pass a readable .jsonl or .parquet file"


def test_permission_denied(tmp_path, monkeypatch):
    path = _file(tmp_path, '{"prompt": "a"}\n')

    def denied(self, *args, **kwargs):  # tests run as root, where chmod 000 does not stop a read
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    assert _error(path) == f"{path}: cannot read it (Permission denied); pass a readable .jsonl or .parquet file"


MISSING = "does not exist; relative paths start at the scenario file's folder"


def test_a_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert _error(path) == f"prompt file {path} {MISSING}"


def test_a_missing_file_with_a_newline_in_its_name_is_one_line(tmp_path):
    path = tmp_path / "a\nb.jsonl"
    assert _error(path) == f"prompt file {ascii(str(path))} {MISSING}"


def test_a_nul_in_the_name(tmp_path):
    path = tmp_path / "a\x00b.jsonl"
    assert _error(path) == f"{ascii(str(path))}: cannot read it (embedded null byte); fix the file name"


def test_a_file_where_a_folder_should_be(tmp_path):
    _file(tmp_path, "x", "plain.txt")
    path = tmp_path / "plain.txt" / "x.jsonl"
    assert _error(path) == f"{path}: cannot read it (Not a directory); pass a readable .jsonl or .parquet file"


def test_a_bad_prompt_file_fails_validate_in_one_line_exit_2(tmp_path, no_processes):
    _file(tmp_path, b'{"prompt": "ok"}\n\xff\n', "qa.jsonl")
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "t"\n[workload]\nprompts = ["qa.jsonl"]\n'
                        '[[engines]]\nname = "a"\nkind = "endpoint"\nlauncher = "external"\n'
                        'model = "m"\nurl = "http://127.0.0.1:9"\n')
    result = CliRunner().invoke(cli, ["validate", str(scenario)])
    assert result.exit_code == 2
    assert result.output == (f"Error: {scenario}: workload.prompts[0]: {tmp_path / 'qa.jsonl'}: not UTF-8 text "
                             "(byte 0xff at offset 17); save it as UTF-8\n")
