"""Real llama-cpp-python (`python -m llama_cpp.server`, its own environment) serving Gemma 3 270M.

The first run builds it (`orch engines install llama-cpp-python`, about 6 minutes on 2 cores);
later runs find it in orch's cache.
"""

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from engines.llama_cpp_python import ENV

pytestmark = pytest.mark.integration

SCENARIO = """name = "lcp"
[workload]
prompts = ["repeat"]
max_tokens = 48
warmup = 1
repeats = 2
[[engines]]
name = "lcp"
kind = "llama-cpp-python"
model = "gemma-3-270m"
api = "completions"
args = ["--n_ctx", "2048", "--n_threads", "2"]
[engines.speculation]
method = "prompt-lookup-decoding"
n_spec = [0, 10]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ENV.install()  # at once when cached
    tmp = tmp_path_factory.mktemp("lcp")
    (tmp / "s.toml").write_text(SCENARIO)
    result = CliRunner().invoke(cli, ["sweep", str(tmp / "s.toml"), "--out", str(tmp / "r")])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp / "r").iterdir()
    lines = lambda name: [json.loads(ln) for ln in (folder / name).read_text().splitlines()]  # noqa: E731
    return folder, lines("cells.jsonl"), lines("requests.jsonl")


def test_prompt_lookup_cells_run_and_count_tokens_with_the_servers_tokenizer(run):
    _, cells, requests = run
    assert [(c["cell_id"], c["status"]) for c in cells] == [("lcp-n0", "ok"), ("lcp-prompt-lookup-decoding-n10", "ok")]
    argv = cells[1]["argv"]
    assert argv[argv.index("--draft_model_num_pred_tokens") + 1] == "10"
    measured = [r for r in requests if r["phase"] == "measured"]
    assert len(measured) == 2 * 3 * 2 and all(r["ok"] for r in measured)
    assert {r["completion_tokens_source"] for r in measured} == {"retokenized"}
    # Every request ran to max_tokens: the re-tokenized count must land exactly on it.
    assert all(r["completion_tokens"] == 48 for r in measured if r["finish_reason"] == "length")
    assert sum(r["finish_reason"] == "length" for r in measured) >= 6


def test_prompt_lookup_output_matches_the_baseline(run):
    folder, _, _ = run
    rows = (folder / "lossless.csv").read_text().splitlines()[1:]
    assert len(rows) == 6
    assert sum(",True," in row for row in rows) >= 5
