"""Argilla settings. The API key is never stored here: only the name of the env var."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ArgillaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    api_url: str = Field(default="http://127.0.0.1:6900")
    api_key_env: str = "ARGILLA_API_KEY"
    api_url_env: str = Field(
        default="ARGILLA_API_URL", description="When this env var is set, it overrides api_url (deployments)."
    )
    workspace: str = "synpref"
    dataset: str = "synpref-verification"
    overlap: int = Field(default=1, ge=1, description="Annotators per record.")
    batch_size: int = Field(default=200, ge=1, description="Records per push request.")
    seed: int = Field(default=0, description="Seeds the per-pair Candidate 1/2 order (stable across pushes).")
    timeout_s: int = Field(default=60, ge=1, description="HTTP timeout for Argilla calls.")
    min_votes: int = Field(
        default=1, ge=1, description="Decided votes a pair needs before it gets a gold label."
    )
