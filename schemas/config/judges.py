"""LLM, reward-model and rule judges, and the attribute generator."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.config.kinds import AttributesKind, JudgeKind, ScorerBackend, one_of


class JudgeConfig(BaseModel):
    """One judge in the group. `kind` picks the backend."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: JudgeKind = Field(description="vllm | openai | reward-model | rm-workspace | rm-crossfit | rule")
    _kind = one_of("kind", JudgeKind)
    model: str = Field(default="", description="Model id or local path (vllm, openai, "
                       "reward-model); for rm-workspace the RM's workspace folder (default rm/gold); "
                       "ignored by rule judges.")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible base URLs.")
    api_key_env: str | None = Field(default=None, description="Env var holding the API key.")
    samples: int = Field(default=1, ge=1, description="Self-consistency samples (needs temperature > 0).")
    temperature: float = Field(default=0.0, ge=0.0)
    both_orders: bool = True
    examples: int = Field(default=8, ge=0, le=8, description="Retrieved human-labeled examples.")
    weight: float = 1.0
    max_model_len: int = 4096
    concurrency: int = 16
    timeout_s: float = 120.0
    retries: int = 3
    gpu_memory_utilization: float | None = None
    top_logprobs: int = Field(default=20, ge=0, le=20, description="openai: top-k logprobs asked "
                              "for (the vllm kind asks for the two labels' logprobs by token id).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="openai: extra request fields, e.g. vLLM's "
        '{"structured_outputs": {"choice": ["1", "2"]}} to allow only the labels.')
    backend: ScorerBackend = Field(default="auto", description="reward-model: auto | vllm | transformers")
    _backend = one_of("backend", ScorerBackend, "reward-model backend")
    enforce_eager: bool = Field(default=False, description="vLLM: skip graph compilation "
                                "(starts in seconds instead of minutes on a CPU; slower per token).")
    batch_size: int = Field(default=64, ge=1, description="Pairs per engine call / write.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="vllm: GPUs one engine spans (a "
                                      "judge too large for one GPU); each judge shard task then asks "
                                      "the cluster for that many GPUs.")
    folds: int = Field(default=5, ge=2, description="rm-crossfit: folds of the pool; each pair is "
                       "judged by an RM trained on the other folds.")

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> JudgeConfig:
        # Greedy decoding gives the same answer every time: vLLM refuses n > 1 at temperature 0,
        # and an OpenAI-compatible server would return copies that only look like votes.
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"judge {self.name!r}: temperature must be > 0 when samples > 1 "
                             f"(samples = {self.samples}, temperature = {self.temperature}); set "
                             "temperature (e.g. 0.7) or samples = 1")
        return self


class AttributesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    kind: AttributesKind = Field(default="heuristic", description="heuristic | vllm | openai")
    _kind = one_of("kind", AttributesKind)
    model: str = ""
    endpoints: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    retries: int = 2
    max_tokens: int = Field(default=512, ge=1, description="Generated tokens per attribute JSON.")
    enforce_eager: bool = False
    max_model_len: int = 4096
    gpu_memory_utilization: float | None = None
    concurrency: int = 16
    timeout_s: float = 120.0
    batch_size: int = Field(default=64, ge=1, description="Pairs per engine call / write.")
    preverify_objective: bool = Field(
        default=False, description="LLM kinds: also judge each response of objective pairs "
        "correct / incorrect (table `preverifications`).")
