"""The two-stage loop, the stage-2 filters and the export."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(default=2, ge=0)
    seed_size: int = Field(default=200, description="Pairs verified in the seed batch.")
    gold_from: str = Field(default="source-labels", description="source-labels | argilla")
    gold_sources: list[str] = Field(default_factory=list,
                                    description="Sources whose own human labels may seed gold; "
                                    "empty means any source with label_source=human.")
    k_max: int = 8
    human_per_round: int = Field(default=0, description="Retrieved pairs sent to humans per round.")
    deadline_s: float = Field(default=86_400.0, description="How long a round waits for humans.")
    poll_s: float = 30.0
    seed: int = 0


class Stage2Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    recycle_flips: bool = True


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_rows: int = 50_000
    include_flipped: bool = True
