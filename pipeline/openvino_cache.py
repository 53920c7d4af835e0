"""Converted OpenVINO models kept on disk, so each process (every Dask or Ray worker, every
re-run) loads the IR in a second instead of tracing and converting the torch module again.

An entry is keyed by the model's weights (a local folder's files by name, size and mtime, or the
hub commit the model was loaded at), the input names, and the openvino and torch versions. A
model with no stable identity (neither) is converted every time and not cached. Entries are
written to a temporary folder and renamed into place, so a killed writer or two processes
converting at once never leave a half-written model behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def model_fingerprint(model_path: str, auto_model: Any, trust_remote_code: bool) -> str | None:
    """What identifies the weights a converted model came from; None when nothing stable does."""
    parts = [f"trust_remote_code={trust_remote_code}"]
    folder = Path(model_path)
    if folder.is_dir():
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix in WEIGHT_SUFFIXES:
                stat = file.stat()
                parts.append(f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
        parts.append(str(folder.resolve()))
    else:
        commit = getattr(getattr(auto_model, "config", None), "_commit_hash", None)
        if not commit:
            return None
        parts.append(f"{model_path}@{commit}")
    for package in ("openvino", "torch"):
        try:
            parts.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}=absent")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def converted_model(ov: Any, cache: Path, fingerprint: str | None, convert: Callable[[], Any]) -> Any:
    """The converted model from `cache` when an entry for `fingerprint` is there, else `convert()`d
    and saved for the next process (fp32 weights kept as they are, so vectors do not change)."""
    if fingerprint is None:
        return convert()
    entry = cache / "openvino" / fingerprint
    xml = entry / "model.xml"
    if xml.is_file():
        try:
            return ov.Core().read_model(str(xml))
        except Exception as exc:  # a damaged entry is converted again and replaced
            log.warning("could not read the cached OpenVINO model %s (%s); converting again", xml, exc)
            shutil.rmtree(entry, ignore_errors=True)
    model = convert()
    staging = entry.with_name(f".{fingerprint}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        os.replace(staging, entry)
    except OSError as exc:  # another process got there first, or the cache is read-only
        log.info("did not keep the converted OpenVINO model in %s: %s", entry, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model
