"""Argilla settings. The API key is never stored here: only the name of the env var."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ArgillaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    api_url: str = Field(default="http://127.0.0.1:6900")
    api_key_env: str = "ARGILLA_API_KEY"
    workspace: str = "synpref"
    dataset: str = "synpref-verification"
    overlap: int = Field(default=1, ge=1, description="Annotators per record.")
    batch_size: int = 200
