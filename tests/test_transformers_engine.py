"""The transformers engine: its command lines, its scenarios' checks, and (integration) the real
server, engines/servers/transformers_generate.py, in the real transformers environment with the
real Gemma 3 270M folder: its flags against the script's own --help, acceptance against known
truth (a model drafting for itself accepts nearly everything under greedy decoding), the lossless
check against its own n_spec 0, and hostile requests."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from engines.hf_transformers import ENV, SERVER, HfTransformers
from orchestrator.cli import cli
from orchestrator.setup.models import prepare_model
from engines.plan import ResolvedModel
from orchestrator.types.scenario import EngineSpec


def engine(method="assistant", draft=None):
    spec = EngineSpec.model_validate({"name": "t", "kind": "transformers", "model": "gemma-3-270m",
                                      "speculation": {"method": method, "n_spec": [0, 3],
                                                      **({"draft_model": draft} if draft else {})}})
    return HfTransformers(spec)


TARGET = ResolvedModel("gemma-3-270m", path=Path("/m/gemma-3-270m-hf"))
DRAFT = ResolvedModel("smollm2-135m", path=Path("/m/smollm2-135m-hf"))


def test_assistant_cells_name_the_assistant_and_the_depth():
    args = engine("assistant", "smollm2-135m").server_args(3, TARGET, 9000, 1, DRAFT)
    assert args[args.index("--method") + 1] == "assistant" and args[args.index("--n-spec") + 1] == "3"
    assert args[args.index("--assistant") + 1] == "/m/smollm2-135m-hf"
    assert args[args.index("--model") + 1] == "/m/gemma-3-270m-hf"


def test_the_baseline_cell_starts_plain_generation():
    args = engine("assistant", "smollm2-135m").server_args(0, TARGET, 9000, 1, DRAFT)
    assert "--method" not in args and "--assistant" not in args and "--n-spec" not in args


def test_prompt_lookup_takes_no_assistant():
    args = engine("prompt-lookup").server_args(8, TARGET, 9000, 1, None)
    assert args[args.index("--method") + 1] == "prompt-lookup" and "--assistant" not in args


def test_the_server_runs_with_the_environments_python():
    plan_prefix = engine("prompt-lookup").command_prefix("/env/bin/python")
    assert plan_prefix == ["/env/bin/python", str(SERVER)] and SERVER.is_file()


def _validate(tmp_path, speculation: str) -> tuple[int, str]:
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\n[[engines]]\nname = "t"\nkind = "transformers"\nmodel = "gemma-3-270m"\n'
                    f'[engines.speculation]\n{speculation}\n')
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result.exit_code, result.output


def test_an_assistant_without_a_draft_model_is_one_line_and_exit_2(tmp_path):
    code, out = _validate(tmp_path, 'method = "assistant"\nn_spec = [0, 4]')
    assert code == 2 and "speculation.draft_model" in out and len(out.strip().splitlines()) == 1


def test_a_method_transformers_lacks_is_refused_with_the_ones_it_has(tmp_path):
    code, out = _validate(tmp_path, 'method = "ngram"\nn_spec = [0, 4]')
    assert code == 2 and "assistant, prompt-lookup" in out


def test_a_requantized_gguf_is_refused_as_an_assistant_folder(tmp_path):
    code, out = _validate(tmp_path, 'method = "assistant"\ndraft_model = "gemma-3-270m-f16"\nn_spec = [0, 4]')
    assert code == 2 and "draft_model" in out and "'gemma-3-270m'" in out


def test_the_published_scenario_dry_runs_with_three_engines_and_their_flags():
    result = CliRunner().invoke(cli, ["sweep", "scenarios/transformers-assisted.toml", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines()]
    assert sum("--method assistant --n-spec 4" in ln and "smollm2-135m-hf" in ln for ln in lines) == 1
    assert sum("--method prompt-lookup --n-spec 8" in ln for ln in lines) == 1
    assert "8 cells" in result.output


# ---------------------------------------------------------------- the real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env_python():
    python = ENV.installed()
    if python is None:
        pytest.fail("the transformers environment is not installed: run `orch engines install transformers` "
                    "(these tests use the real server)")
    prepare_model("gemma-3-270m", "hf")
    return str(python)


@pytest.mark.integration
def test_every_flag_orch_passes_is_one_the_server_defines(env_python):
    out = subprocess.run([env_python, str(SERVER), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    args = engine("assistant", "smollm2-135m").server_args(3, TARGET, 9000, 1, DRAFT) + ["--threads", "2"]
    flags = {a for a in args if a.startswith("--")}
    assert flags and all(f in out.stdout for f in flags), sorted(f for f in flags if f not in out.stdout)


@pytest.fixture(scope="module")
def plain_server(env_python):
    port = _free_port()
    folder = prepare_model("gemma-3-270m", "hf")[0]
    proc = subprocess.Popen([env_python, str(SERVER), "--model", str(folder), "--port", str(port), "--threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            break
        except OSError:
            assert proc.poll() is None, "the server exited while loading"
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(30)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
@pytest.mark.parametrize("body, field", [
    (b"not json", "Expecting value"),
    (b"[1, 2]", "JSON object"),
    (b'{"prompt": "hi", "max_tokens": true}', "max_tokens"),
    (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "hi", "temperature": "hot"}', "temperature"),
    (b'{"prompt": ""}', "prompt"),
    (b'{"prompt": 7}', "prompt"),
    (b'{"prompt": "hi", "max_tokens": 1048576}', "positions"),  # past the model's context: refused, not run for hours
])
def test_a_bad_request_is_a_400_that_names_the_field(plain_server, body, field):
    status, obj = _post(plain_server + "/v1/completions", body)
    assert status == 400 and field in obj["error"]["message"]


@pytest.mark.integration
def test_chat_on_a_base_model_without_a_template_says_to_use_completions(plain_server):
    status, obj = _post(plain_server + "/v1/chat/completions",
                        json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
    assert status == 400 and "/v1/completions" in obj["error"]["message"]


@pytest.mark.integration
def test_the_prompt_starts_with_bos_as_llama_cpp_encodes_it(plain_server):
    # Gemma's GGUF says add_bos_token; without <bos> the model writes "<b><b><b>...".
    status, obj = _post(plain_server + "/v1/completions", b'{"prompt": "hello", "max_tokens": 1}')
    assert status == 200 and obj["usage"]["prompt_tokens"] == 2  # <bos> + "hello" (id 23391)


@pytest.mark.integration
def test_a_client_that_hangs_up_mid_stream_leaves_the_server_serving(plain_server):
    body = json.dumps({"prompt": "Count: 1, 2, 3,", "max_tokens": 400, "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(plain_server + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.readline().startswith(b"data: ")
    status, obj = _post(plain_server + "/v1/completions", b'{"prompt": "hello", "max_tokens": 3, "ignore_eos": true}')
    assert status == 200 and obj["usage"]["completion_tokens"] == 3 and obj["choices"][0]["finish_reason"] == "length"


@pytest.fixture(scope="module")
def sweep_run(env_python, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transformers")
    (tmp / "s.toml").write_text(
        'name = "tf"\n[workload]\nprompts = [{ source = "repeat", ids = ["repeat-passage"] }, '
        '{ source = "seeds", ids = ["average-speed"] }]\nmax_tokens = 24\nwarmup = 0\nrepeats = 1\n'
        '[[engines]]\nname = "pl"\nkind = "transformers"\nmodel = "gemma-3-270m"\napi = "completions"\n'
        'args = ["--threads", "2"]\nready_timeout_s = 300\n'
        '[engines.speculation]\nmethod = "prompt-lookup"\nn_spec = [0, 4]\n'
        '[[engines]]\nname = "self"\nkind = "transformers"\nmodel = "gemma-3-270m"\napi = "completions"\n'
        'args = ["--threads", "2"]\nready_timeout_s = 300\n'
        '[engines.speculation]\nmethod = "assistant"\ndraft_model = "gemma-3-270m"\nn_spec = [3]\n')
    result = CliRunner().invoke(cli, ["sweep", str(tmp / "s.toml"), "--out", str(tmp / "r")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "r").iterdir()
    rows = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    return {(r["cell_id"], r["prompt_id"]): r for r in rows if r["phase"] == "measured"}


@pytest.mark.integration
def test_every_request_ran_and_counted_its_tokens(sweep_run):
    assert len(sweep_run) == 6 and all(r["ok"] for r in sweep_run.values())
    assert all(r["completion_tokens"] == 24 for r in sweep_run.values() if r["finish_reason"] == "length")


@pytest.mark.integration
def test_a_model_drafting_for_itself_accepts_nearly_every_draft(sweep_run):
    for prompt in ("repeat-passage", "average-speed"):
        r = sweep_run[("self-assistant-n3", prompt)]
        assert r["spec_num_draft_tokens"] > 0
        assert r["spec_num_accepted_draft_tokens"] >= 0.9 * r["spec_num_draft_tokens"]
        assert sum(r["spec_acceptance_histogram"]) == r["spec_num_spec_steps"]


@pytest.mark.integration
def test_prompt_lookup_accepts_drafts_where_the_output_copies_the_prompt(sweep_run):
    r = sweep_run[("pl-prompt-lookup-n4", "repeat-passage")]
    assert r["spec_num_accepted_draft_tokens"] > 0
    assert r["spec_num_draft_tokens"] <= 4 * r["spec_num_spec_steps"]
    assert sweep_run[("pl-n0", "repeat-passage")].get("spec_num_draft_tokens") is None


@pytest.mark.integration
def test_greedy_speculation_writes_what_the_baseline_wrote(sweep_run):
    for prompt in ("repeat-passage", "average-speed"):
        base = sweep_run[("pl-n0", prompt)]["text"]
        assert base and "<b><b>" not in base
        assert sweep_run[("pl-prompt-lookup-n4", prompt)]["text"] == base
        assert sweep_run[("self-assistant-n3", prompt)]["text"] == base
