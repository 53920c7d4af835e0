"""Where pairs come from and how the cleaning stage treats them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImagesConfig(BaseModel):
    """How images inside pairs are checked and fetched; a row whose image fails is quarantined."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=20 << 20, gt=0, description="Largest encoded image accepted.")
    max_pixels: int = Field(default=40_000_000, gt=0, description="Largest width x height accepted "
                            "(decompression-bomb guard).")
    allow_fetch: bool = Field(default=False, description="Download http(s) images; otherwise they "
                              "stay references with sha256 null.")
    fetch_timeout_s: float = Field(default=20.0, gt=0)


class SourceConfig(BaseModel):
    """One input: a file, a glob, a folder, or a hub dataset id (`hf://org/name` or `org/name`)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str = Field(default="auto", description="auto, hh-rlhf, sharegpt, prompt-chosen-rejected, "
                        "llmbar, pandalm, offsetbias, llava, image-question, vl-rewardbench, generic")
    name: str | None = Field(default=None, description="Source name stored on each pair.")
    license: str = ""
    label_source: str | None = Field(default=None, description="human | ai | unknown; "
                                     "defaults to what the format implies.")
    column_map: dict[str, str] = Field(default_factory=dict,
                                       description="generic format: our field -> their column.")
    split: str | None = Field(default=None, description="Hub datasets: which split.")
    limit: int | None = Field(default=None, description="Read at most this many rows.")
    split_bytes: int = Field(default=256 << 20, gt=0, description="Uncompressed JSONL and Parquet files "
                             "bigger than this are staged by several tasks: byte ranges that end on a "
                             "line, or runs of whole row groups, of about this size.")
    images: ImagesConfig = Field(default_factory=ImagesConfig)


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmarks: list[str] = Field(default_factory=list,
                                  description="Benchmark files whose first user turns are "
                                  "decontaminated against.")
    ngram: int = 13
    compact_rows: int = Field(default=200_000, ge=0, description="The clean step first clusters the "
                              "pool's parts of small ingests by pair_id (as `synpref compact` does) once "
                              "they hold this many rows; 0 never.")
    image_phash_distance: int = Field(default=6, ge=0, le=64, description="Near-duplicate images: "
                                      "perceptual-hash Hamming distance at or below this, same question.")
    clip_model: str | None = Field(default=None, description="sentence-transformers CLIP model for the "
                                   "image view (e.g. clip-ViT-B-32); None skips CLIP near-dups.")
    clip_threshold: float = Field(default=0.95, gt=0, le=1)
