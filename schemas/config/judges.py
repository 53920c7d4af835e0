"""LLM, reward-model and rule judges, and the attribute generator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JudgeConfig(BaseModel):
    """One judge in the group. `kind` picks the backend."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str = Field(description="vllm | openai | reward-model | rm-workspace | rule")
    model: str = Field(default="", description="Model id or local path (vllm, openai, "
                       "reward-model); ignored by rule judges.")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible base URLs.")
    api_key_env: str | None = Field(default=None, description="Env var holding the API key.")
    samples: int = Field(default=1, ge=1, description="Self-consistency samples.")
    temperature: float = 0.0
    both_orders: bool = True
    examples: int = Field(default=8, ge=0, le=8, description="Retrieved human-labeled examples.")
    weight: float = 1.0
    max_model_len: int = 4096
    concurrency: int = 16
    timeout_s: float = 120.0
    retries: int = 3
    gpu_memory_utilization: float | None = None


class AttributesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    kind: str = Field(default="heuristic", description="heuristic | vllm | openai")
    model: str = ""
    endpoints: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    retries: int = 2
