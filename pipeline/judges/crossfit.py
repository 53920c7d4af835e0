"""A reward-model judge trained on the pool's own labels, cross-fitted so it never judges a pair
it was trained on.

The pool's labels are noisy, but most of them are right: an RM trained on thousands of them
learns the preference better than one trained on a small gold seed, and a label that disagrees
with what the rest of the pool teaches is likely wrong. Each pair belongs to one of `folds`
folds (a hash of its pair_id, so the split is the same on every run); the RM that judges a
pair was trained on every other fold (current labels: gold and silver verdicts where the loop
has them, the stored orientation elsewhere) and selected on gold. The judge needs no model
weights beyond the frozen sentence encoder, so it is the embedded default's second opinion
next to the gold RM, where a real deployment has LLM judges.

A judging step runs the judge in many shard or partition tasks, each with its own judge object.
The fold RMs are trained once per set of labels: a local workspace keeps them under
`_crossfit/<judge>/<key>/fold-<k>/`, keyed by the labels, the RM settings and the folds, and a
task that finds its fold's RM there loads it instead of training it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xxhash

from pipeline.rm.base import Example
from schemas.attributes import PreferenceAttributes
from schemas.config.rm import RMConfig
from schemas.errors import ConfigError
from schemas.labels import GOLD_SPLIT_SCHEMA, LABELS_SCHEMA, Judgment
from schemas.pair import PairRecord

from .base import Judge, LabeledExample
from .reward_model import rm_judgment

DEFAULT_FOLDS = 5
CACHE = "_crossfit"


def fold_of(pair_id: str, folds: int) -> int:
    """The pair's fold: stable across runs and machines."""
    return xxhash.xxh3_64_intdigest(pair_id.encode()) % folds


class CrossFitRMJudge(Judge):
    """Out-of-fold verdicts of embedding-head RMs trained on the pool's current labels."""

    kind = "rm-crossfit"

    def __init__(self, name: str, model: str, *, ws: Any, folds: int = DEFAULT_FOLDS,
                 rm: RMConfig | None = None, **kwargs: Any) -> None:
        if ws is None:
            raise ConfigError(f"judge {name!r}: kind rm-crossfit needs a workspace")
        if folds < 2:
            raise ConfigError(f"judge {name!r}: folds must be at least 2, not {folds}")
        cfg = rm if rm is not None else RMConfig()
        if model:
            cfg = cfg.model_copy(update={"base_model": model})
        super().__init__(name, cfg.base_model, **kwargs)
        self.ws = ws
        self.folds = folds
        self.rm_config = cfg.model_copy(update={"kind": "embedding-head"})
        self._models: dict[int, Any] = {}
        self._labeled: tuple[list[Example], list[bool]] | None = None
        self._labels: pl.DataFrame | None = None
        self._key: str | None = None

    def current_labels(self) -> pl.DataFrame:
        """(pair_id, verdict, gold) for the active pool: gold, then silver, then stored labels."""
        from pipeline.pool import active_pool

        pool = active_pool(self.ws).select("pair_id").unique().collect()
        parts = []
        for table, is_gold in (("gold", True), ("silver", False)):
            if self.ws.has_table(table):
                frame = pl.from_arrow(self.ws.read(table, ["pair_id", "verdict"], schema=LABELS_SCHEMA))
                assert isinstance(frame, pl.DataFrame)
                parts.append(frame.unique("pair_id", keep="first").with_columns(gold=pl.lit(is_gold)))
        parts.append(pool.with_columns(verdict=pl.lit("chosen"), gold=pl.lit(False)))
        merged = pl.concat(parts, how="vertical").unique("pair_id", keep="first", maintain_order=True)
        # Evaluation gold measures this judge: it never trains or selects any of its fold models.
        merged = merged.join(self.eval_gold(), on="pair_id", how="anti")
        return merged.filter(pl.col("verdict").is_in(["chosen", "rejected"])).sort("pair_id")

    def eval_gold(self) -> pl.DataFrame:
        """(pair_id) of the evaluation part of gold (table gold_split), empty when there is none."""
        if not self.ws.has_table("gold_split"):
            return pl.DataFrame(schema={"pair_id": pl.String})
        split = pl.from_arrow(self.ws.read("gold_split", ["pair_id", "part"], schema=GOLD_SPLIT_SCHEMA))
        assert isinstance(split, pl.DataFrame)
        return split.filter(pl.col("part") == "eval").select("pair_id")

    def fold_data(self, fold: int) -> tuple[list[Example], list[Example]]:
        """(training examples, gold examples) of one fold's RM: every other fold plus gold.

        The pool is read and oriented once per judge; each fold takes its share of that.
        """
        if self._labeled is None:
            from pipeline.rm import oriented_examples

            labels = self._current()
            examples, _ = oriented_examples(self.ws, labels, f"judge {self.name}")
            gold_ids = set(labels.filter(pl.col("gold"))["pair_id"].to_list())
            self._labeled = (examples, [e.pair_id in gold_ids for e in examples])
        examples, is_gold = self._labeled
        train = [e for e, g in zip(examples, is_gold, strict=True)
                 if g or fold_of(e.pair_id, self.folds) != fold]
        gold = [e for e, g in zip(examples, is_gold, strict=True) if g]
        return train, gold

    def _current(self) -> pl.DataFrame:
        if self._labels is None:
            self._labels = self.current_labels()
        return self._labels

    def cache_dir(self, fold: int) -> Path | None:
        """Where this fold's RM is kept for the current labels (None: a non-local workspace)."""
        if not self.ws.is_local:
            return None
        if self._key is None:  # the labels are hashed once per judge, not once per fold
            from pipeline.rm.training import labels_hash

            labels = self._current()
            parts = [self.rm_config.model_dump_json(), f"folds={self.folds}", labels_hash(labels),
                     labels_hash(labels.filter(pl.col("gold")))]
            self._key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
        return Path(self.ws.path(CACHE, self.name, self._key, f"fold-{fold}"))

    def _model(self, fold: int) -> Any:
        """The RM of one fold, trained on `fold_data` and selected on gold (or loaded, when a task
        before this one trained it on the same labels)."""
        if fold not in self._models:
            from pipeline.rm import build_rm
            from pipeline.rm.embedding_head import EmbeddingHeadRM

            kept = self.cache_dir(fold)
            if kept is not None and (kept / "head.json").exists():
                self._models[fold] = EmbeddingHeadRM.load(kept, self.rm_config)
                return self._models[fold]
            train, gold = self.fold_data(fold)
            if not train:
                raise ValueError(f"judge {self.name!r}: no labeled pair to train fold {fold} on")
            model = build_rm(self.rm_config)
            model.fit(train, gold or None)
            if kept is not None:
                _keep(model, kept)
            self._models[fold] = model
        return self._models[fold]

    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        by_fold: dict[int, list[int]] = {}
        for i, pair in enumerate(pairs):
            by_fold.setdefault(fold_of(pair.pair_id, self.folds), []).append(i)
        scores = np.zeros((len(pairs), 2), dtype=np.float64)
        for fold, rows in sorted(by_fold.items()):
            scores[rows] = self._model(fold).score([pairs[i] for i in rows])
        return [rm_judgment(pair.pair_id, self.name, self.model, float(rc), float(rr), round)
                for pair, (rc, rr) in zip(pairs, scores, strict=True)]


def _keep(model: Any, folder: Path) -> None:
    """Save a fold's RM where later tasks look for it: written aside, then renamed into place; a
    task that lost the race keeps the RM already there (trained on the same labels)."""
    aside = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    model.save(aside)
    try:
        os.rename(aside, folder)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
