"""Encoder backends (torch fp32/bf16/fp16, OpenVINO) and the calibrated `auto` choice.

fp32 torch is the reference. A faster backend is only trusted when its vectors stay within
cosine `MIN_COSINE` of fp32 on calibration texts; `auto` measures the candidates once per model,
device and machine, and remembers the winner in the user cache (and in the process).

OpenVINO runs the transformer converted with `openvino.convert_model` straight from the torch
module (no optimum-intel, whose pins clash with the rest of the stack); sentence-transformers'
own pooling/normalize modules then run on its token embeddings, so any pooling a model
declares is honoured. On CPUs with bf16 support OpenVINO's default precision hint is bf16.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.openvino_cache import converted_model, model_fingerprint
from schemas.errors import ConfigError, SynprefError

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
CPU_BACKENDS = ("openvino", "torch-bf16", "torch")
CUDA_BACKENDS = ("torch-fp16", "torch-bf16", "torch")
ALL_BACKENDS = ("torch", "torch-bf16", "torch-fp16", "openvino")

_lock = threading.Lock()
_chosen: dict[str, str] = {}


class EmbedError(SynprefError, ValueError):
    """Embedding could not run; the message names the model, table or pair."""


class BackendUnavailable(SynprefError, RuntimeError):
    """The backend cannot run here (library missing, wrong device)."""


class Runner(Protocol):
    dim: int
    max_seq_length: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@functools.lru_cache(maxsize=8)
def load_sentence_transformer(
    model_path: str, device: str, dtype: str = "float32", trust_remote_code: bool = False
) -> Any:
    """A sentence-transformers model, loaded once per process, dtype and trust_remote_code.

    `trust_remote_code` lets models that ship their own modeling code (jina-embeddings-v3) load.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype != "float32":
        kwargs["model_kwargs"] = {"dtype": getattr(torch, dtype)}
    try:
        model = SentenceTransformer(model_path, device=device, **kwargs)
    except OSError as exc:
        raise EmbedError(
            f"embedding model {model_path!r} could not be loaded (no local folder of that name, and "
            f"the hub is unreachable or HF_HUB_OFFLINE is set): {exc}"
        ) from exc
    except ValueError as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise EmbedError(
                f"embedding model {model_path!r} ships its own code; set embed.trust_remote_code = true "
                "in synpref.toml to run it"
            ) from exc
        raise
    model.eval()
    return model


class TorchRunner:
    """sentence-transformers' own encode, in fp32, bf16 or fp16."""

    def __init__(self, model_path: str, device: str, dtype: str, trust_remote_code: bool = False) -> None:
        if dtype == "float16" and device == "cpu":
            raise BackendUnavailable("torch-fp16 needs a GPU")
        self.model = load_sentence_transformer(model_path, device, dtype, trust_remote_code)
        self.dim = _embedding_dim(self.model)
        self.max_seq_length = int(self.model.max_seq_length or 512)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=len(texts), convert_to_tensor=True, normalize_embeddings=True
        )
        return vectors.float().cpu().numpy()


class OpenVinoRunner:
    """The transformer compiled by OpenVINO for the CPU; pooling by sentence-transformers."""

    def __init__(self, model_path: str, device: str, trust_remote_code: bool = False) -> None:
        if device != "cpu":
            raise BackendUnavailable("the openvino backend runs on the CPU")
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable("install openvino to use the openvino backend") from exc
        import torch

        self.model = load_sentence_transformer(model_path, "cpu", "float32", trust_remote_code)
        self.dim = _embedding_dim(self.model)
        self.max_seq_length = int(self.model.max_seq_length or 512)
        example = self._features(["an example sentence", "another one, a little longer than that"])
        # Tracing warns about data-dependent branches that are constant for this model.
        auto_model = self.model[0].auto_model

        def convert() -> Any:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ov.convert_model(auto_model, example_input=example)

        fingerprint = model_fingerprint(model_path, auto_model, trust_remote_code)
        key = fingerprint and f"{fingerprint}-{'-'.join(sorted(example))}"
        converted = converted_model(ov, cache_dir(), key, convert)
        self._input_names = {i.get_any_name() for i in converted.inputs}
        self._compiled = ov.Core().compile_model(converted, "CPU")
        self._torch = torch

    def _features(self, texts: Sequence[str]) -> dict[str, Any]:
        features = self.model.preprocess(list(texts))
        return {k: v for k, v in features.items() if hasattr(v, "shape")}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        features = self._features(texts)
        inputs = {k: v.numpy() for k, v in features.items() if k in self._input_names}
        token_embeddings = self._compiled(inputs)[0]
        pooled: dict[str, Any] = {
            "token_embeddings": torch.from_numpy(np.asarray(token_embeddings, dtype=np.float32)),
            "attention_mask": features["attention_mask"],
        }
        with torch.no_grad():
            for module in list(self.model)[1:]:
                pooled = module(pooled)
        return pooled["sentence_embedding"].float().numpy()


def make_runner(model_path: str, device: str, backend: str, trust_remote_code: bool = False) -> Runner:
    """The runner of one backend; raises BackendUnavailable where it cannot run."""
    return _cached_runner(model_path, device, backend, trust_remote_code)


@functools.lru_cache(maxsize=8)
def _cached_runner(model_path: str, device: str, backend: str, trust_remote_code: bool = False) -> Runner:
    if backend == "torch":
        return TorchRunner(model_path, device, "float32", trust_remote_code)
    if backend == "torch-bf16":
        return TorchRunner(model_path, device, "bfloat16", trust_remote_code)
    if backend == "torch-fp16":
        return TorchRunner(model_path, device, "float16", trust_remote_code)
    if backend == "openvino":
        return OpenVinoRunner(model_path, device, trust_remote_code)
    raise ConfigError(f"unknown embedding backend {backend!r}; choose auto or one of {ALL_BACKENDS}")


# -- calibration ------------------------------------------------------------------------------

CALIBRATION_TEXTS = [
    "How do I reverse a linked list in Python without using extra memory?",
    "Write a short poem about the sea at night.",
    "User: What is the capital of Australia?\n\nAssistant: The capital of Australia is Canberra.",
    "Explain why the sky is blue to a ten-year-old, in two or three sentences.",
    "Is it ever acceptable to lie to protect someone's feelings? Give both sides.",
    "Summarize: The committee met on Tuesday and agreed to postpone the vote until more data "
    "on the budget impact is available, citing concerns raised by several members.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# what is wrong with this?",
    "Translate into French: the weather is lovely today and we are going to the beach.",
    "Solve for x: 3x + 7 = 22. Show each step.",
    "I feel stressed about my exams next week. Any advice on how to prepare and stay calm?",
    "Chosen: Sure! Here are three ideas for a birthday party on a budget.\n\nRejected: No.",
    "List the planets of the solar system in order of their distance from the sun.",
] + [
    " ".join(
        f"Sentence {i} of a longer passage about topic {j}, with numbers {i * j} and words."
        for i in range(1, 12 + 2 * j)
    )
    for j in range(12)
]


def calibrate(
    model_path: str,
    device: str,
    candidates: Sequence[str],
    texts: Sequence[str] = CALIBRATION_TEXTS,
    rounds: int = 2,
    *,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Speed (texts/s) and min cosine to fp32 of each candidate backend on `texts`.

    Candidates are timed in turn, `rounds` times, keeping each one's best time, so a burst of
    load from other processes does not decide the winner.
    """
    runners: dict[str, Runner] = {"torch": make_runner(model_path, device, "torch", trust_remote_code)}
    results: dict[str, dict[str, Any]] = {}
    for backend in dict.fromkeys(c for c in candidates if c != "torch"):
        try:
            runners[backend] = make_runner(model_path, device, backend, trust_remote_code)
        except Exception as exc:  # a backend that cannot start is skipped, never fatal
            if not isinstance(exc, BackendUnavailable):
                log.warning("embedding backend %s failed to start: %s", backend, exc)
            results[backend] = {"backend": backend, "available": False, "reason": str(exc)}
    batches = [list(texts[i : i + 16]) for i in range(0, len(texts), 16)]
    vectors = {}
    for backend, runner in runners.items():
        runner.encode(batches[0][:4])  # warm-up: lazy init and kernel selection
        vectors[backend] = _unit(np.concatenate([runner.encode(b) for b in batches]))
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for backend, runner in runners.items():
            started = time.perf_counter()
            for b in batches:
                runner.encode(b)
            best[backend] = min(best[backend], time.perf_counter() - started)
    for backend in runners:
        results[backend] = {
            "backend": backend,
            "available": True,
            "texts_per_s": len(texts) / best[backend],
            "min_cosine": float(np.min(np.sum(vectors[backend] * vectors["torch"], axis=1))),
        }
    return [results[b] for b in dict.fromkeys([*candidates, "torch"]) if b in results]


def choose_backend(model_path: str, device: str, trust_remote_code: bool = False) -> str:
    """The fastest backend within MIN_COSINE of fp32 here; measured once, then remembered."""
    key = _cache_key(model_path, device, trust_remote_code)
    with _lock:
        if key in _chosen:
            return _chosen[key]
        remembered = _read_cache().get(key)
        if remembered in ALL_BACKENDS:
            _chosen[key] = remembered
            return remembered
        candidates = CUDA_BACKENDS if device.startswith("cuda") else CPU_BACKENDS
        results = calibrate(model_path, device, candidates, CALIBRATION_TEXTS,
                            trust_remote_code=trust_remote_code)
        good = [r for r in results if r.get("available") and r["min_cosine"] >= MIN_COSINE]
        best = max(good, key=lambda r: r["texts_per_s"])["backend"] if good else "torch"
        _chosen[key] = best
        _write_cache(key, best, results)
        return best


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cache_dir() -> Path:
    return Path(os.environ.get("SYNPREF_CACHE", Path.home() / ".cache" / "synpref"))


def _cache_key(model_path: str, device: str, trust_remote_code: bool = False) -> str:
    versions = []
    # Versions are read from the installed metadata, not imported: openvino takes seconds to import.
    for name in ("torch", "openvino", "sentence-transformers"):
        try:
            versions.append(f"{name.replace('-', '_')}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name.replace('-', '_')}=absent")
    # models loaded with their own code are remembered apart from the same path loaded without it
    parts = [model_path, device, *(["trust_remote_code"] if trust_remote_code else []), _cpu_name()]
    return "|".join([*parts, *versions])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_cache() -> dict[str, str]:
    path = cache_dir() / "embed-backend.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v["backend"] for k, v in data.items() if isinstance(v, dict) and "backend" in v}


def _write_cache(key: str, backend: str, results: list[dict[str, Any]]) -> None:
    path = cache_dir() / "embed-backend.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = {"backend": backend, "calibration": results, "at": time.time()}
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    except OSError as exc:  # a read-only home only costs a re-calibration next time
        log.info("could not remember the embedding backend in %s: %s", path, exc)


def _embedding_dim(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())
