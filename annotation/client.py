"""Connecting to Argilla: the API key comes only from the environment and never reaches a log.

The connection is checked up front with one short request, so an unreachable server or a wrong
key fails in seconds with a message that says which, instead of the SDK's retry loop and a
traceback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx

from schemas.errors import SynprefError

if TYPE_CHECKING:
    import argilla as rg

DEFAULT_KEY_ENV = "ARGILLA_API_KEY"


class ArgillaUnavailable(SynprefError, ConnectionError):
    """Argilla cannot be used: not reachable, key missing or rejected, workspace absent."""


def api_key_from_env(api_key_env: str = DEFAULT_KEY_ENV) -> str:
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise ArgillaUnavailable(
            f"no Argilla API key: set the environment variable {api_key_env} (keys are never read from files)"
        )
    return key


def check_connection(api_url: str, api_key: str, *, timeout: float = 10.0) -> dict:
    """The user the key belongs to (GET /api/v1/me); ArgillaUnavailable on any failure."""
    url = api_url.rstrip("/")
    try:
        reply = httpx.get(f"{url}/api/v1/me", headers={"X-Argilla-Api-Key": api_key}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ArgillaUnavailable(f"Argilla at {url} is not reachable ({type(exc).__name__})") from None
    if reply.status_code in (401, 403):
        raise ArgillaUnavailable(f"Argilla at {url} rejected the API key (HTTP {reply.status_code})")
    if reply.status_code != 200:
        raise ArgillaUnavailable(f"Argilla at {url} answered HTTP {reply.status_code} to /api/v1/me")
    try:
        return reply.json()
    except ValueError:
        raise ArgillaUnavailable(
            f"{url} does not look like an Argilla server (no JSON from /api/v1/me)"
        ) from None


def connect(
    api_url: str,
    api_key_env: str = DEFAULT_KEY_ENV,
    *,
    timeout: int = 60,
    api_key: str | None = None,
) -> rg.Argilla:
    """An SDK client for `api_url`, keyed from `api_key_env` (or an explicit key in tests)."""
    import argilla as rg

    key = api_key if api_key is not None else api_key_from_env(api_key_env)
    check_connection(api_url, key, timeout=min(float(timeout), 10.0))
    try:
        return rg.Argilla(api_url=api_url.rstrip("/"), api_key=key, timeout=timeout, retries=2)
    except Exception as exc:
        raise ArgillaUnavailable(
            f"could not open an Argilla client for {api_url}: {type(exc).__name__}"
        ) from None
