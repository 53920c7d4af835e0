"""Build the configured judges and run them over workspace pairs, storing every raw judgment.

Judgments are appended to the `judgments` table chunk by chunk (keyed by pair, judge, sample,
order, round), so a crash or a dead server loses at most the chunk in flight, and a re-run
skips every (pair, judge) already stored for the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from pipeline.covers import scan_meeting
from pipeline.partitions import partition_holding
from pipeline.pool import pool_rows
from pipeline.store import Workspace
from schemas.attributes import PreferenceAttributes
from schemas.config.judges import JudgeConfig
from schemas.errors import ConfigError, InputError
from schemas.labels import JUDGMENTS_SCHEMA, Judgment, Verdict
from schemas.pair import PairRecord

from .base import Judge, JudgeError, LabeledExample

if TYPE_CHECKING:
    from pipeline.stage import Partition

JUDGMENT_KEY = ["pair_id", "judge", "sample", "order", "round"]
ProgressFn = Callable[[str, int, int], None]
"""progress(judge_name, pairs_done, pairs_total)."""


@dataclass
class JudgeStats:
    pairs: int = 0
    judgments_written: int = 0
    skipped: int = 0
    invalid: int = 0
    abstained: int = 0
    per_judge: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def build_judges(configs: list[JudgeConfig], *, ws: Workspace | None = None) -> list[Judge]:
    """One Judge per config; engines and servers are touched only when a judge first runs."""
    from .crossfit import CrossFitRMJudge
    from .openai_compat import OpenAIJudge
    from .reward_model import RewardModelJudge, WorkspaceRMJudge
    from .rules import RuleJudge
    from .vllm_offline import VLLMJudge

    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"judge names must be unique; repeated: {duplicates}")
    judges: list[Judge] = []
    for c in configs:
        common: dict[str, Any] = {"weight": c.weight, "samples": c.samples, "both_orders": c.both_orders,
                                  "examples": c.examples, "batch_size": c.batch_size}
        if c.kind in ("vllm", "openai") and not c.model:
            raise ConfigError(f"judge {c.name!r}: kind {c.kind} needs `model`")
        if c.kind == "vllm":
            judges.append(VLLMJudge(c.name, c.model, temperature=c.temperature,
                                    max_model_len=c.max_model_len,
                                    gpu_memory_utilization=c.gpu_memory_utilization,
                                    enforce_eager=c.enforce_eager, workspace=ws,
                                    tensor_parallel_size=c.tensor_parallel_size, **common))
        elif c.kind == "openai":
            judges.append(OpenAIJudge(c.name, c.model, temperature=c.temperature,
                                      endpoints=c.endpoints, api_key_env=c.api_key_env,
                                      concurrency=c.concurrency, timeout_s=c.timeout_s,
                                      retries=c.retries, top_logprobs=c.top_logprobs,
                                      extra_body=c.extra_body, workspace=ws, **common))
        elif c.kind == "reward-model":
            if not c.model:
                raise ConfigError(f"judge {c.name!r}: kind reward-model needs `model` (path or hub id)")
            judge = RewardModelJudge(c.name, c.model, **common)
            judge.scorer_kwargs = {"backend": c.backend, "max_length": c.max_model_len,
                                   "gpu_memory_utilization": c.gpu_memory_utilization,
                                   "enforce_eager": c.enforce_eager}
            judges.append(judge)
        elif c.kind == "rm-workspace":
            judges.append(WorkspaceRMJudge(c.name, c.model, ws=ws, **common))
        elif c.kind == "rm-crossfit":
            judges.append(CrossFitRMJudge(c.name, c.model, ws=ws, folds=c.folds, **common))
        elif c.kind == "rule":
            judges.append(RuleJudge(c.name, c.model, **common))
        else:
            raise ConfigError(f"judge {c.name!r}: unknown kind {c.kind!r} "
                             "(vllm | openai | reward-model | rm-workspace | rm-crossfit | rule)")
    return judges


def load_pairs(ws: Workspace, pair_ids: list[str]) -> list[PairRecord]:
    """Pool records for `pair_ids`, in that order; unknown ids are a clear error."""
    if not ws.has_table("pool"):
        raise InputError(f"{ws.uri}: the workspace has no pool; ingest a source first")
    wanted = list(dict.fromkeys(pair_ids))
    found = {r["pair_id"]: r for r in pool_rows(ws, wanted).iter_rows(named=True)}
    missing = [p for p in wanted if p not in found]
    if missing:
        raise InputError(f"{len(missing)} pair ids are not in the pool of {ws.uri}, e.g. {missing[:3]}")
    return [PairRecord.from_row(found[p]) for p in wanted]


def load_attributes(ws: Workspace, pair_ids: list[str],
                    partition: Partition | None = None) -> dict[str, PreferenceAttributes]:
    """The attributes of `pair_ids` (of the pool `partition`: only the parts that may hold them)."""
    if not ws.has_table("attributes"):
        return {}
    return attributes_of(scan_meeting(ws, "attributes", partition).filter(pl.col("pair_id").is_in(pair_ids))
                         .collect())


def attributes_of(rows: pl.DataFrame) -> dict[str, PreferenceAttributes]:
    """Attributes rows as judges take them, per pair (the last row of a pair wins)."""
    out = {}
    for r in rows.iter_rows(named=True):
        out[r["pair_id"]] = PreferenceAttributes(
            task_category=r["task_category"], objectivity=r["objectivity"],
            controversiality=r["controversiality"], desired_attributes=r["desired_attributes"],
            guideline=r["guideline"])
    return out


def labeled_examples(ws: Workspace, neighbours: dict[str, list[str]], *, table: str = "gold",
                     k: int = 8) -> dict[str, list[LabeledExample]]:
    """Worked examples per target pair: its retrieved neighbours that carry a human label in `table`.

    `neighbours` maps a target pair_id to candidate pair_ids, nearest first (e.g. a FAISS search
    over gold); the first `k` that are labeled chosen/rejected are kept.
    """
    wanted = sorted({p for ids in neighbours.values() for p in ids})
    if not wanted or not ws.has_table(table):
        return {}
    labels = ws.scan(table).filter(pl.col("pair_id").is_in(wanted)).select("pair_id", "verdict").collect()
    verdicts = {p: Verdict(v) for p, v in labels.iter_rows()
                if v in (Verdict.chosen.value, Verdict.rejected.value)}
    records = {r.pair_id: r for r in load_pairs(ws, list(verdicts))} if verdicts else {}
    attributes = load_attributes(ws, list(verdicts))
    out = {}
    for target, ids in neighbours.items():
        shots = [LabeledExample(records[p], verdicts[p], attributes.get(p))
                 for p in ids if p in verdicts and p != target][:k]
        if shots:
            out[target] = shots
    return out


def stored_pairs(ws: Workspace, round: int, pair_ids: list[str],
                 partition: Partition | None = None) -> dict[str, set[str]]:
    """judge name -> pair_ids (of the pool `partition`) that already have judgments in this round."""
    if not ws.has_table("judgments"):
        return {}
    done = (scan_meeting(ws, "judgments", partition)
            .filter((pl.col("round") == round) & pl.col("pair_id").is_in(pair_ids))
            .select("judge", "pair_id").unique().collect())
    out: dict[str, set[str]] = {}
    for judge, pair_id in done.iter_rows():
        out.setdefault(judge, set()).add(pair_id)
    return out


def write_judgments(ws: Workspace, judgments: list[Judgment], partition: Partition | None = None) -> int:
    """Append judgments not stored yet; of a pool `partition`'s pairs, checked against (and
    marked as) that partition's parts only (pipeline/covers.py)."""
    if not judgments:
        return 0
    table = pa.Table.from_pylist([j.model_dump(mode="json") for j in judgments], schema=JUDGMENTS_SCHEMA)
    return ws.append("judgments", table, unique_key=JUDGMENT_KEY, schema=JUDGMENTS_SCHEMA,
                     partition=partition)


def judge_pairs(
    ws: Workspace,
    judges: list[Judge],
    pair_ids: list[str],
    round: int,
    seed: int,
    *,
    examples: dict[str, list[LabeledExample]] | None = None,
    chunk_pairs: int | None = None,
    progress: ProgressFn | None = None,
    records: list[PairRecord] | None = None,
    partition: Partition | None = None,
    attributes: dict[str, PreferenceAttributes] | None = None,
) -> JudgeStats:
    """Run every judge over `pair_ids` and append each raw judgment to `judgments`.

    Each judge gets its pairs `chunk_pairs` at a time (default: the judge's own `batch_size`);
    every chunk is one engine call or request wave, and its judgments are written before the next.

    `records`: the pool records of `pair_ids` when the caller has read them already (a partition
    task reads its own rows), so the pool is not scanned for them again. `partition`: the pool
    partition they all come from (a partition task's), so stored judgments and attributes are
    read from its parts only. `attributes`: the pairs' attributes when the caller has them (a
    gathered shard, pipeline/gather.py).

    A judge whose backend fails raises JudgeError after the judgments it finished are stored.
    """
    start = time.perf_counter()
    stats = JudgeStats(pairs=len(dict.fromkeys(pair_ids)))
    if not pair_ids or not judges:
        return stats
    records = load_pairs(ws, pair_ids) if records is None else records
    ids = [r.pair_id for r in records]
    partition = partition_holding(ws, ids) if partition is None else partition
    attributes = load_attributes(ws, ids, partition) if attributes is None else attributes
    done = stored_pairs(ws, round, ids, partition)
    examples = examples or {}
    for judge in judges:
        todo = [r for r in records if r.pair_id not in done.get(judge.name, set())]
        stats.skipped += len(records) - len(todo)
        written = 0
        if progress:
            progress(judge.name, 0, len(todo))
        size = chunk_pairs or judge.batch_size
        for startat in range(0, len(todo), size):
            chunk = todo[startat:startat + size]
            try:
                made = judge.judge(chunk, attributes=attributes, examples=examples, round=round, seed=seed)
            except JudgeError as exc:
                stats.judgments_written += write_judgments(ws, exc.partial, partition)
                raise
            written += write_judgments(ws, made, partition)
            stats.invalid += sum(j.verdict == Verdict.invalid for j in made)
            stats.abstained += len({r.pair_id for r in chunk} - {j.pair_id for j in made})
            if progress:
                progress(judge.name, startat + len(chunk), len(todo))
        stats.per_judge[judge.name] = written
        stats.judgments_written += written
    stats.seconds = round_s(time.perf_counter() - start)
    return stats


def round_s(seconds: float) -> float:
    return float(f"{seconds:.3f}")
