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
