"""The allowed values of every `kind`-like setting, as Literal types checked at config load.

A typo (`kind = "vlm"`) fails when the config is read, with the allowed values in the message,
instead of deep inside a run. `one_of` gives the message the code's own checks give.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import field_validator

JudgeKind = Literal["vllm", "openai", "reward-model", "rm-workspace", "rm-crossfit", "rule"]
ScorerBackend = Literal["auto", "vllm", "transformers"]
AttributesKind = Literal["heuristic", "vllm", "openai"]
RMKind = Literal["embedding-head", "sequence-classifier"]
RMHead = Literal["linear", "mlp"]
EncoderBackend = Literal["auto", "torch", "torch-bf16", "torch-fp16", "openvino"]
AutoYesNo = Literal["auto", "yes", "no"]
Device = Literal["auto", "cpu", "cuda"]
IndexKind = Literal["auto", "flat", "ivf", "ivfsq", "ivfpq", "hnsw"]
MultiGpu = Literal["shard", "replicate"]
GoldFrom = Literal["source-labels", "argilla"]


def one_of(field: str, allowed: Any, what: str | None = None) -> Any:
    """A before-validator for `field`: `unknown <what> 'x' (expected one of a, b, c)`."""
    choices = get_args(allowed)
    label = what or field.replace("_", " ")

    def check(cls: type, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"unknown {label} {value!r} (expected one of {', '.join(choices)})")
        return value

    return field_validator(field, mode="before")(check)
