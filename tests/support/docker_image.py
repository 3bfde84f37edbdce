"""A local CPU image of llama-server for the Docker tests: the binary orch built, plus the
shared libraries `ldd` lists, imported as a file tree (no registry needed)."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

IMAGE = "orch-test/llama-server:cpu"


def docker_client():
    """The local Docker engine; a test that needs one fails in CI (.ci/run starts dockerd) and
    skips elsewhere, saying how to start one."""
    import os

    import docker
    import pytest

    try:
        c = docker.from_env()
        c.ping()
    except docker.errors.DockerException:
        if os.environ.get("CI"):
            pytest.fail("no Docker engine in CI: .ci/run installs docker.io and starts dockerd")
        pytest.skip("no Docker engine (apt-get install docker.io; dockerd --bridge=none --iptables=false &)")
    return c


def build_llama_image(client, binary: str) -> str:
    libs = re.findall(r"(/\S+\.so[\w.]*)", subprocess.run(["ldd", binary], capture_output=True, text=True).stdout)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(Path(binary).resolve(), arcname="app/llama-server")
        for lib in libs:
            tar.add(Path(lib).resolve(), arcname=lib.lstrip("/"))
    client.api.import_image_from_data(buf.getvalue(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1],
                                      changes=['ENTRYPOINT ["/app/llama-server"]'])
    return IMAGE


def engine(name, args=(), n_spec="[0, 4]", launcher="docker"):
    """An [[engines]] table of llama-server with Gemma 3 270M in the test image (launcher "docker")
    or as a process (launcher "process"), the same otherwise."""
    extra = "".join(f', "{a}"' for a in args)
    docker = (f'[engines.docker]\nimage = "{IMAGE}"\ngpus = "none"\nnetwork = "host"\n'
              'env = ["HF_TOKEN"]\n' if launcher == "docker" else "")
    return (f'[[engines]]\nname = "{name}"\nkind = "llama-server"\nlauncher = "{launcher}"\nmodel = "gemma-3-270m"\n'
            f'api = "completions"\nargs = ["-c", "2048", "-t", "2"{extra}]\nready_timeout_s = 120\n{docker}'
            f'[engines.speculation]\nmethod = "ngram-mod"\nn_spec = {n_spec}\n')
