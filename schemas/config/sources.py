"""Where pairs come from and how the cleaning stage treats them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SourceConfig(BaseModel):
    """One input: a file, a glob, a folder, or a hub dataset id (`hf://org/name` or `org/name`)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str = Field(default="auto", description="auto, hh-rlhf, sharegpt, prompt-chosen-rejected, "
                        "llmbar, pandalm, offsetbias, generic")
    name: str | None = Field(default=None, description="Source name stored on each pair.")
    license: str = ""
    label_source: str | None = Field(default=None, description="human | ai | unknown; "
                                     "defaults to what the format implies.")
    column_map: dict[str, str] = Field(default_factory=dict,
                                       description="generic format: our field -> their column.")
    split: str | None = Field(default=None, description="Hub datasets: which split.")
    limit: int | None = Field(default=None, description="Read at most this many rows.")


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmarks: list[str] = Field(default_factory=list,
                                  description="Benchmark files whose first user turns are "
                                  "decontaminated against.")
    ngram: int = 13
