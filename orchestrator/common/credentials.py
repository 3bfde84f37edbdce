"""The API key orch sends a server, read from the environment when it is needed, never stored.

The same for every engine, so it lives here and not behind the Engine class."""

from __future__ import annotations

import os

from orchestrator.common import redact


class KeyProblem(ValueError):
    """The API key's variable is unset, or holds what no HTTP header can carry."""


def bearer(api_key_env: str | None) -> dict[str, str]:
    """The Authorization header from the variable named `api_key_env`, read now; {} without one."""
    if not api_key_env:
        return {}
    value = os.environ.get(api_key_env)
    if not value:
        raise KeyProblem(f"{api_key_env}, named by api_key_env, is not set; export {api_key_env}=... first")
    redact.remember(value)
    if not (value.isascii() and value.isprintable()) or value != value.strip():
        raise KeyProblem(f"${api_key_env} holds spaces, a line end or characters an HTTP header cannot carry "
                         "(a key copied with its newline?); set it to the key alone")
    return {"Authorization": f"Bearer {value}"}


def auth_fix(api_key_env: str | None) -> str:
    """What to do when a server answers 401/403."""
    if api_key_env:
        return f"check the API key in ${api_key_env}"
    return ("it wants an API key: put it in an environment variable and name that with "
            "api_key_env (orch bench: --api-key-env NAME)")
