"""The project configuration (`synpref.toml`), validated by pydantic.

Secrets never live here: sections name the environment variable that holds a key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from schemas.config.annotation import ArgillaConfig
from schemas.config.embed import DEFAULT_EMBEDDER, EmbedConfig, IndexConfig, SemanticDedupConfig
from schemas.config.judges import AttributesConfig, JudgeConfig
from schemas.config.loop import ExportConfig, LoopConfig, Stage2Config
from schemas.config.rm import RMConfig
from schemas.config.sources import CleanConfig, SourceConfig
from schemas.errors import ConfigError


class SynprefConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: str = "workspace"
    sources: list[SourceConfig] = Field(default_factory=list)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    semantic_dedup: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    attributes: AttributesConfig = Field(default_factory=AttributesConfig)
    judges: list[JudgeConfig] = Field(default_factory=list)
    rm: RMConfig = Field(default_factory=RMConfig)
    argilla: ArgillaConfig = Field(default_factory=ArgillaConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @classmethod
    def load(cls, path: str | Path) -> SynprefConfig:
        """Read a TOML file; relative paths in it resolve against the file's folder."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        config = cls.model_validate(data)
        return config.resolve_paths(path.parent)

    def resolve_paths(self, base: Path) -> SynprefConfig:
        """Relative paths resolve against the config file's folder.

        The workspace is always a path or URI. An input that does not exist under `base` and
        looks like `org/name` stays as written, so hub dataset ids reach `datasets`.
        """

        def resolve_path(p: str) -> str:
            if "://" in p or Path(p).is_absolute():
                return p
            return str(base / p)

        def resolve_input(p: str) -> str:
            if "://" in p or Path(p).is_absolute():
                return p
            candidate = base / p
            if candidate.exists() or p.startswith(".") or any(ch in p for ch in "*?["):
                return str(candidate)
            looks_like_hub_id = p.count("/") == 1 and "." not in p.rsplit("/", 1)[1]
            return p if looks_like_hub_id else str(candidate)

        return self.model_copy(
            update={
                "workspace": resolve_path(self.workspace),
                "sources": [s.model_copy(update={"path": resolve_input(s.path)}) for s in self.sources],
                "clean": self.clean.model_copy(
                    update={"benchmarks": [resolve_input(b) for b in self.clean.benchmarks]}
                ),
            }
        )


__all__ = [
    "DEFAULT_EMBEDDER",
    "ArgillaConfig",
    "AttributesConfig",
    "CleanConfig",
    "EmbedConfig",
    "ExportConfig",
    "IndexConfig",
    "JudgeConfig",
    "LoopConfig",
    "RMConfig",
    "SemanticDedupConfig",
    "SourceConfig",
    "Stage2Config",
    "SynprefConfig",
]
