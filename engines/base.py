"""The small abstract class every engine implements."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class ServerPlan:
    """What a launcher needs to start one server for one cell."""

    argv: list[str]
    port: int
    health_path: str
    env: dict[str, str]
    base_url: str | None = None  # set for a server orch did not start


class Engine(ABC):
    kind: ClassVar[str]
    # Speculation methods this engine understands; "none" (the baseline) is always allowed.
    methods: ClassVar[tuple[str, ...]]
    # Methods that need a draft model file.
    draft_methods: ClassVar[tuple[str, ...]] = ()
    health_path: ClassVar[str] = "/health"
    needs_binary: ClassVar[bool] = True
    # False: `model` is a served model name, not a file or hub reference to resolve.
    resolves_model: ClassVar[bool] = True
    install_hint: ClassVar[str] = ""

    def __init__(self, spec):
        self.spec = spec

    @abstractmethod
    def default_binary(self) -> str | None:
        """Path of the server binary when the scenario names none, or None if not found."""

    @abstractmethod
    def server_args(self, n_spec: int, model, port: int, parallel: int, draft=None) -> list[str]:
        """Arguments after the binary for one cell."""

    def binary(self) -> str | None:
        if self.spec.binary:
            return self.spec.binary
        return self.default_binary()

    def plan(self, n_spec: int, model, port: int, parallel: int, draft=None) -> ServerPlan:
        """`model` and `draft` are orchestrator.models.ResolvedModel (draft may be None)."""
        if not self.needs_binary:
            return ServerPlan(argv=[], port=port, health_path=self.health_path, env={}, base_url=self.spec.url)
        binary = self.binary() or self.kind
        argv = [binary, *self.server_args(n_spec, model, port, parallel, draft), *self.spec.args]
        return ServerPlan(argv=argv, port=port, health_path=self.health_path, env=dict(self.spec.env))

    def request_fields(self, workload) -> dict:
        """Engine-specific JSON fields added to every request body."""
        return {}

    def cache_setting(self, workload) -> str:
        """How prompt/prefix caching was set for this engine, for the report."""
        return "engine default"

    def version(self) -> str:
        return "unknown"

    @staticmethod
    def which(name: str) -> str | None:
        found = shutil.which(name)
        return str(Path(found).resolve()) if found else None
