"""Secrets never reach a file or the terminal.

orch remembers each secret when it reads one (an API key from the environment, the password of
a `user:pass@host` URL), and every line it writes to a run folder or prints passes through
`scrub`. Server bodies quoted in error messages also lose anything after `Bearer`/`Basic`
(`credentials`), since a server may echo the Authorization header it received, in any form.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"
_secrets: set[str] = set()
# An Authorization value in any quoting: `Bearer abc`, `"authorization": "Basic eHl6"`.
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)(\s+|\\?[\"']?\s*[:=]\s*\\?[\"']?)[A-Za-z0-9._~+/=-]{4,}")


def remember(secret: str | None) -> None:
    """From now on, `secret` (and its JSON-escaped form) is written and printed as [redacted]."""
    if not secret or len(secret) < 4:  # shorter strings are too common in text to be told apart
        return
    _secrets.add(secret)
    _secrets.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    _secrets.add(json.dumps(secret)[1:-1])


def remember_url(url: str | None) -> None:
    """The password of a `user:pass@host` URL, and the Basic credential a client makes of it."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password is not None or parts.username:  # a token may stand alone as the user part
        remember(parts.password or parts.username)
        remember(base64.b64encode(f"{parts.username or ''}:{parts.password or ''}".encode()).decode())


# A scenario's server flag whose value is a credential (`--api-key K`, `--hf-token=K`), and an
# environment variable's name that says its value is one (HF_TOKEN, OPENAI_API_KEY, DB_PASSWORD).
_SECRET_FLAG = re.compile(r"(?i)^--?[\w.-]*(key|token|secret|passw(or)?d|credential|auth)[\w.-]*$")
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw(or)?d|credential|auth)")


def remember_args(args: list[str]) -> None:
    """The value of every credential flag of a command line (`--api-key K` or `--api-key=K`)."""
    for flag, value in zip(args, args[1:], strict=False):
        if _SECRET_FLAG.match(flag) and not value.startswith("-"):
            remember(value)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if eq and _SECRET_FLAG.match(flag):
            remember(value)


def remember_env(env: dict[str, str]) -> None:
    """The values of environment variables whose names say they hold credentials."""
    for name, value in env.items():
        if _SECRET_NAME.search(name):
            remember(value)


def scrub(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def credentials(text: str) -> str:
    """A server's words (an error body, an exception) without any credential it echoed."""
    return scrub(_AUTH_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text))


def public_url(url: str | None) -> str | None:
    """The URL to show: `user:pass@host` becomes `user:***@host`, and `token@host` `***@host`,
    whatever their length (scrub leaves strings under 4 characters alone)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.username}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


_T = TypeVar("_T")


def scrub_values(obj: _T) -> _T:
    """`obj` with every secret taken out of its strings, a dict's string keys included (a server
    may echo a key into a /metrics label, which becomes a key); numbers are left alone, so a
    secret that happens to look like a number cannot break a JSON line."""
    if not _secrets:
        return obj
    # The same kind of value comes back (a str, dict or list is rebuilt as a plain one).
    if isinstance(obj, str):
        return cast(_T, scrub(obj))
    if isinstance(obj, dict):
        return cast(_T, {scrub(k) if isinstance(k, str) else k: scrub_values(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return cast(_T, [scrub_values(v) for v in obj])
    return obj
