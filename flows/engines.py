"""Reward models that score shards, loaded once per worker process and reused across shards.

A scoring engine (a vLLM instance, a GPU model) costs seconds to minutes to start and holds
memory until closed, so a worker that scores many shards of one round keeps the round's model:
the cache holds one model per process, keyed by where it lives and what `rm.json` says (a
retrained model at the same place is a new key). Asking for another model closes the old one;
`release()` closes it when the flow is done, and the process's exit closes what remains.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.store import Workspace


@dataclass
class _Cache:
    key: tuple[str, str, str] | None = None
    model: Any = None
    loads: int = 0
    closes: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


_cache = _Cache()


def _key(ws: Workspace, rm_dir: str) -> tuple[str, str, str]:
    meta = ws.read_json(f"{rm_dir}/rm.json")
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
    return ws.uri, rm_dir, digest


@contextlib.contextmanager
def scoring_model(ws: Workspace, rm_dir: str) -> Iterator[Any]:
    """The reward model saved at `rm_dir` (loaded on this process's first request for it), held
    by one caller at a time: threads of one process share the engine, and engines such as vLLM's
    take one caller at a time."""
    from pipeline.rm import load_rm

    key = _key(ws, rm_dir)
    with _cache.lock:
        if _cache.key != key:
            _close_locked()
            _cache.model = load_rm(ws, rm_dir)
            _cache.key = key
            _cache.loads += 1
        yield _cache.model


def _close_locked() -> None:
    if _cache.model is not None:
        _cache.model.close()
        _cache.closes += 1
    _cache.model, _cache.key = None, None


def release() -> None:
    """Close this process's cached model (the flow calls it after its scoring step)."""
    with _cache.lock:
        _close_locked()


def stats() -> dict[str, int]:
    """Loads and closes so far in this process (what tests and benchmarks read)."""
    return {"loads": _cache.loads, "closes": _cache.closes, "held": int(_cache.model is not None)}


atexit.register(release)
