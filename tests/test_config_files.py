"""Engine.config_files: the files an engine's server reads at start. Where the plan says they are
(a local process: the cell's config/ folder; a container: that folder mounted read-only), what a
hostile name or a planted link gets. The running case (a plugin's server reading its file) is in
tests/test_plugins.py."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from engines import ENGINES
from engines.plan import CONFIG_MOUNT, ConfigFile, Mount, ResolvedModel
from orchestrator.common.errors import RunFolderError
from orchestrator.sweep.runner import write_config_files
from orchestrator.types.scenario import DockerSettings, EngineSpec

LlamaServer = ENGINES["llama-server"]


class WithTemplate(LlamaServer):
    """llama-server given a chat template file (its real --chat-template-file flag)."""

    def config_files(self, n_spec, model, draft):
        return (ConfigFile("template.jinja", "{{ messages[0].content }}"),)

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1"):
        return [*super().server_args(n_spec, model, port, parallel, draft, host),
                "--chat-template-file", self.config_file("template.jinja")]


def spec(**kw) -> EngineSpec:
    binary = {} if kw.get("launcher") == "docker" else {"binary": "/x"}
    return EngineSpec(name="a", kind="llama-server", model="m.gguf", **binary, **kw)


MODEL = ResolvedModel("m.gguf", path=Path("/m/m.gguf"))


def test_a_local_server_is_pointed_at_the_cells_config_folder(tmp_path):
    plan = WithTemplate(spec()).plan(0, MODEL, 8080, 1, config_dir=tmp_path / "config")
    i = plan.argv.index("--chat-template-file")
    assert plan.argv[i + 1] == str(tmp_path / "config" / "template.jinja")
    assert plan.config_dir == tmp_path / "config" and [f.name for f in plan.files] == ["template.jinja"]
    write_config_files(plan, tmp_path)
    assert (tmp_path / "config" / "template.jinja").read_text() == "{{ messages[0].content }}"


def test_a_scenarios_args_may_name_the_folder_too(tmp_path):
    plan = WithTemplate(spec(args=["--lora", "{orch_config}/template.jinja"])).plan(
        0, MODEL, 8080, 1, config_dir=tmp_path)
    assert plan.argv[plan.argv.index("--lora") + 1] == f"{tmp_path}/template.jinja"


def test_a_container_sees_the_folder_read_only_at_its_mount(tmp_path):
    engine = WithTemplate(spec(launcher="docker", docker=DockerSettings(image="llama:local", gpus="none")))
    plan = engine.plan(0, MODEL, 8080, 1, config_dir=tmp_path / "config")
    assert plan.container is not None
    assert Mount(str(tmp_path / "config"), CONFIG_MOUNT, "ro") in plan.container.volumes
    line = plan.container.run_line()
    assert line[line.index("--chat-template-file") + 1] == str(PurePosixPath(CONFIG_MOUNT) / "template.jinja")
    assert f"{tmp_path / 'config'}:{CONFIG_MOUNT}:ro" in line


def test_an_engine_that_writes_no_file_plans_as_before(tmp_path):
    plain = LlamaServer(spec()).plan(0, MODEL, 8080, 1, config_dir=tmp_path)
    assert plain.files == () and plain.config_dir is None
    assert plain.argv == LlamaServer(spec()).plan(0, MODEL, 8080, 1).argv
    docker = LlamaServer(spec(launcher="docker", docker=DockerSettings(image="i", gpus="none"))).plan(
        0, MODEL, 8080, 1, config_dir=tmp_path)
    assert docker.container is not None and all(m.target != CONFIG_MOUNT for m in docker.container.volumes)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "a..b", "con fig", "a\nb"])
def test_a_name_that_is_not_one_plain_file_is_refused(name):
    with pytest.raises(ValueError, match="one plain file name"):
        ConfigFile(name, "text")


def test_a_link_planted_where_the_file_goes_is_refused_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    cell = tmp_path / "cell"
    (cell / "config").mkdir(parents=True)
    os.symlink(outside, cell / "config" / "template.jinja")
    plan = WithTemplate(spec()).plan(0, MODEL, 8080, 1, config_dir=cell / "config")
    with pytest.raises(RunFolderError):
        write_config_files(plan, cell)
    assert outside.read_text() == "keep"


def test_the_flag_the_example_engine_uses_is_one_llama_server_has(llama_help):
    live, _removed, _types = llama_help
    assert "--chat-template-file" in live
