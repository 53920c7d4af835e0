"""The two-stage loop, the stage-2 filters and the export."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.config.kinds import GoldFrom, one_of


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(default=2, ge=0)
    seed_size: int = Field(default=200, description="Pairs verified in the seed batch.")
    gold_from: GoldFrom = Field(default="source-labels", description="source-labels | argilla")
    _gold_from = one_of("gold_from", GoldFrom, "loop.gold_from")
    gold_sources: list[str] = Field(default_factory=list,
                                    description="Sources whose own human labels may seed gold; "
                                    "empty means any source with label_source=human.")
    silver_seed_size: int = Field(default=200, ge=0, description="Pairs the judges label in round 1, "
                                  "so the first RM has silver to train on.")
    k_max: int = 8
    retrieve_max: int = Field(default=400, ge=0, description="Most retrieved pairs judged per round "
                              "(failures first).")
    shard_rows: int = Field(default=2_000, ge=1, description="Pairs per scoring shard task.")
    max_parallel_shards: int = Field(default=4, ge=1, description="Shard tasks in flight at once.")
    gold_eval_share: float = Field(
        default=1 / 3, ge=0.0, lt=1.0,
        description="Share of gold (seeded, stratified by source and task category) kept for "
        "evaluation only: no RM trains on it, no judge sees it as an example, no retrieval starts from "
        "it. Every gold accuracy, judge reliability and calibration the loop reports or acts on comes "
        "from this part.")
    human_per_round: int = Field(default=0, description="Retrieved pairs sent to humans per round.")
    deadline_s: float = Field(default=86_400.0, description="How long a round waits for humans.")
    poll_s: float = 30.0
    seed: int = 0


class Stage2Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    recycle_flips: bool = True
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="p above which an RM agrees "
                             "with the stored label.")
    min_reliability: float = Field(
        default=0.6, ge=0.5, le=1.0,
        description="A label is changed or dropped only on evidence (an RM, the judges' vote) whose "
        "evaluation-gold accuracy has a 95% lower bound at or above this; otherwise the stage abstains "
        "and the stored label stays.")
    flip_confidence: float = Field(
        default=0.8, ge=0.5, lt=1.0,
        description="A label is flipped only when the calibrated probability that the stored label "
        "is wrong (calibrated on evaluation gold, with the pool's estimated noise rate as the prior) "
        "is above this.")
    max_judged: int | None = Field(default=None, description="Cap on pairs filter A sends to the "
                                   "judges (lowest p first); None judges them all.")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_rows: int = 50_000
    include_flipped: bool = True
