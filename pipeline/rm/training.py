"""Train a reward model from the workspace's labels, keep it in the workspace, load it back.

Training pairs are the pool rows named by a label frame (pair_id, verdict): `chosen` keeps the
stored orientation, `rejected` trains on the pair flipped, `tie` / `invalid` are skipped and
counted. The checkpoint kept is the one with the best gold accuracy (ties: lower gold loss).
Everything needed to reproduce a model sits under its `out` folder: the weights (model/), the
config (rm.json), data hashes and metrics (train.json).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from pipeline.rm.base import (
    Example,
    FitResult,
    RewardModel,
    mean_bt_loss,
    pairwise_accuracy,
)
from schemas.config.rm import RMConfig
from schemas.errors import ConfigError, InputError
from schemas.labels import Verdict
from schemas.pair import PairRecord

if TYPE_CHECKING:
    from pipeline.store import Workspace

KINDS = ("embedding-head", "sequence-classifier")


@dataclass
class TrainResult:
    """What `train_rm` did; `to_dict()` is what rounds/N/ records."""

    out: str
    kind: str
    base_model: str
    train_pairs: int
    gold_pairs: int
    skipped: dict[str, int]
    gold_accuracy: float | None
    gold_loss: float | None
    best_epoch: float | None
    best_step: int | None
    seconds: float
    pairs_per_second: float
    truncation: dict[str, int]
    data_hashes: dict[str, str]
    gold_by_source: dict[str, dict[str, float]] = field(default_factory=dict)
    gold_by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    model: RewardModel | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        # asdict() would deep-copy the model; it is left out instead.
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "model"}


def build_rm(cfg: RMConfig) -> RewardModel:
    """An untrained reward model of the configured kind."""
    if cfg.kind == "embedding-head":
        from pipeline.rm.embedding_head import EmbeddingHeadRM

        return EmbeddingHeadRM(cfg)
    if cfg.kind == "sequence-classifier":
        from pipeline.rm.sequence_classifier import SequenceClassifierRM

        return SequenceClassifierRM(cfg)
    raise ConfigError(f"rm.kind: unknown kind {cfg.kind!r} (expected one of {', '.join(KINDS)})")


def _model_class(kind: str) -> type[RewardModel]:
    if kind == "embedding-head":
        from pipeline.rm.embedding_head import EmbeddingHeadRM

        return EmbeddingHeadRM
    if kind == "sequence-classifier":
        from pipeline.rm.sequence_classifier import SequenceClassifierRM

        return SequenceClassifierRM
    raise ConfigError(f"unknown reward-model kind {kind!r}")


def labels_hash(labels: pl.DataFrame) -> str:
    """A content hash of (pair_id, verdict) rows, independent of row order."""
    lines = sorted(f"{p}\t{v}" for p, v in zip(labels["pair_id"], labels["verdict"], strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def oriented_examples(ws: Workspace, labels: pl.DataFrame, what: str) -> tuple[list[Example], Counter[str]]:
    """Pool pairs oriented by their verdicts; also how many rows were skipped and why."""
    for column in ("pair_id", "verdict"):
        if column not in labels.columns:
            raise InputError(f"{what} labels: missing column {column!r} (have {labels.columns})")
    known = {v.value for v in Verdict}
    bad = labels.filter(~pl.col("verdict").is_in(list(known)))
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(f"{what} labels: pair {row['pair_id']} has unknown verdict {row['verdict']!r}")
    labels = labels.unique(subset="pair_id", keep="last", maintain_order=True)
    skipped = Counter(labels.filter(~pl.col("verdict").is_in(["chosen", "rejected"]))["verdict"].to_list())
    usable = labels.filter(pl.col("verdict").is_in(["chosen", "rejected"]))
    if usable.height == 0:
        return [], skipped
    rows = ws.scan("pool").filter(pl.col("pair_id").is_in(usable["pair_id"].to_list())).collect()
    rows = rows.unique(subset="pair_id", keep="first")
    by_id = {r["pair_id"]: r for r in rows.to_dicts()}
    missing = [p for p in usable["pair_id"] if p not in by_id]
    if missing:
        raise InputError(f"{what} labels: {len(missing)} pair_ids are not in the pool, e.g. {missing[0]}")
    examples = [
        Example.from_record(PairRecord.from_row(by_id[p]), flipped=(v == Verdict.rejected.value))
        for p, v in zip(usable["pair_id"], usable["verdict"], strict=True)
    ]
    return examples, skipped


def _group_accuracy(scores: np.ndarray, groups: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(groups)):
        idx = [i for i, g in enumerate(groups) if g == name]
        out[name] = {"accuracy": pairwise_accuracy(scores[idx]), "n": float(len(idx))}
    return out


def _categories(ws: Workspace, pair_ids: list[str]) -> list[str]:
    if not ws.has_table("attributes"):
        return ["unknown"] * len(pair_ids)
    frame = (ws.scan("attributes").select("pair_id", "task_category")
             .filter(pl.col("pair_id").is_in(pair_ids)).collect().unique("pair_id", keep="last"))
    found = dict(zip(frame["pair_id"], frame["task_category"], strict=True))
    return [found.get(p) or "unknown" for p in pair_ids]


def gold_accuracy(ws: Workspace, model: RewardModel, gold: pl.DataFrame | None = None) -> dict[str, Any]:
    """Accuracy and BT loss of `model` on gold labels (default: the `gold` table), with
    breakdowns per source and per task category (from `attributes` when present)."""
    if gold is None:
        gold = pl.from_arrow(ws.read("gold")) if ws.has_table("gold") else pl.DataFrame(
            {"pair_id": [], "verdict": []}, schema={"pair_id": pl.String, "verdict": pl.String})
    examples, skipped = oriented_examples(ws, gold, "gold")  # type: ignore[arg-type]
    if not examples:
        return {"accuracy": None, "loss": None, "n": 0, "skipped": dict(skipped),
                "by_source": {}, "by_category": {}}
    scores = model.score(examples)
    return {
        "accuracy": pairwise_accuracy(scores),
        "loss": mean_bt_loss(scores),
        "n": len(examples),
        "skipped": dict(skipped),
        "by_source": _group_accuracy(scores, [e.source for e in examples]),
        "by_category": _group_accuracy(scores, _categories(ws, [e.pair_id for e in examples])),
    }


def _publish_dir(ws: Workspace, local: Path, rel: str) -> None:
    """Copy a local folder into the workspace; a local target is swapped in by one rename."""
    if ws.is_local:
        target = ws.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        shutil.copytree(local, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    else:
        ws.remove(rel)
        ws.fs.put(str(local), ws.path(rel), recursive=True)


def train_rm(
    ws: Workspace,
    cfg: RMConfig,
    train: pl.DataFrame,
    gold: pl.DataFrame | None,
    out: str,
) -> TrainResult:
    """Train a reward model on `train` labels, select its checkpoint on `gold`, save it under `out`.

    The returned result holds the trained model (`.model`) so the caller can score with it
    without loading it again.
    """
    train_examples, train_skipped = oriented_examples(ws, train, "train")
    if not train_examples:
        raise InputError("train labels: no pair has a chosen/rejected verdict")
    gold_examples, gold_skipped = oriented_examples(ws, gold, "gold") if gold is not None else ([], Counter())
    model = build_rm(cfg)
    fit: FitResult = model.fit(train_examples, gold_examples or None)
    model.name = out
    report = gold_accuracy(ws, model, gold) if gold_examples else {}
    with tempfile.TemporaryDirectory(prefix="synpref-rm-save-") as tmp:
        model.save(Path(tmp))
        _publish_dir(ws, Path(tmp), f"{out}/model")
    best = fit.best
    result = TrainResult(
        out=out,
        kind=cfg.kind,
        base_model=cfg.base_model,
        train_pairs=len(train_examples),
        gold_pairs=len(gold_examples),
        skipped={f"train_{k}": v for k, v in train_skipped.items()}
        | {f"gold_{k}": v for k, v in gold_skipped.items()},
        gold_accuracy=best.gold_accuracy if best else None,
        gold_loss=best.gold_loss if best else None,
        best_epoch=best.epoch if best else None,
        best_step=best.step if best else None,
        seconds=fit.seconds,
        pairs_per_second=fit.pairs_per_second,
        truncation=fit.truncation,
        data_hashes={"train": labels_hash(train)} | ({"gold": labels_hash(gold)} if gold is not None else {}),
        gold_by_source=report.get("by_source", {}),
        gold_by_category=report.get("by_category", {}),
        checkpoints=[asdict(c) for c in fit.checkpoints],
        model=model,
    )
    ws.write_json(f"{out}/rm.json", {"kind": cfg.kind, "config": cfg.model_dump()})
    ws.write_json(f"{out}/train.json", result.to_dict())
    return result


def load_rm(ws: Workspace, out: str, *, scorer: str | None = None) -> RewardModel:
    """The reward model `train_rm` saved under `out`; `scorer` overrides rm.scorer."""
    meta = ws.read_json(f"{out}/rm.json")
    if meta is None:
        raise FileNotFoundError(f"no reward model in workspace {ws.uri} at {out} (rm.json missing)")
    cfg = RMConfig.model_validate(meta["config"])
    if scorer is not None:
        cfg = cfg.model_copy(update={"scorer": scorer})
    if ws.is_local:
        directory = ws.local_path(out, "model")
    else:
        directory = Path(tempfile.mkdtemp(prefix="synpref-rm-load-"))
        ws.fs.get(ws.path(out, "model"), str(directory), recursive=True)
    model = _model_class(meta["kind"]).load(directory, cfg)
    model.name = out
    return model
