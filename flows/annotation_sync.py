"""Human verification in Argilla, composed with the workspace: the push and pull steps that both
the loop (flows/argilla_step.py) and `synpref annotate` run.

push reads pool + attributes + judgments and sends the chosen pairs (highest protocol priority
first); pull appends the submitted responses to `verifications` and rebuilds the human part of
`gold` from the majority of submitted verdicts. Both connect first, so an unreachable server or a
wrong key leaves the workspace unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.errors import SynprefError

if TYPE_CHECKING:
    import argilla as rg
    import polars as pl

    from annotation.push import PushStats
    from pipeline.store import Workspace
    from schemas.attributes import PreferenceAttributes
    from schemas.config import ArgillaConfig
    from schemas.labels import Judgment, Verification

log = logging.getLogger(__name__)


class ArgillaDatasetMissing(SynprefError):
    """The verification dataset does not exist in Argilla yet."""


def open_dataset(cfg: ArgillaConfig, *, create: bool, api_url: str | None = None,
                 image_fields: int = 0) -> tuple[rg.Argilla, Any]:
    """Client + verification dataset. URL: --api-url, else $ARGILLA_API_URL (the config's
    api_url_env), else the config's api_url; the key only from the env var the config names."""
    from annotation.client import connect
    from annotation.push import ensure_dataset, find_dataset

    url = api_url or os.environ.get(cfg.api_url_env, "").strip() or cfg.api_url
    client = connect(url, cfg.api_key_env, timeout=cfg.timeout_s)
    if create:
        return client, ensure_dataset(client, cfg.dataset, cfg.workspace, overlap=cfg.overlap,
                                      image_fields=image_fields)
    dataset = find_dataset(client, cfg.dataset, cfg.workspace)
    if dataset is None:
        raise ArgillaDatasetMissing(
            f"no Argilla dataset {cfg.workspace}/{cfg.dataset} yet: run `synpref annotate push` first"
        )
    return client, dataset


def _attributes(ws: Workspace, pair_ids: set[str] | None) -> dict[str, PreferenceAttributes]:
    import polars as pl

    from schemas.attributes import ATTRIBUTES_SCHEMA, PreferenceAttributes

    if not ws.has_table("attributes"):
        return {}
    frame = ws.scan("attributes", schema=ATTRIBUTES_SCHEMA)
    if pair_ids is not None:
        frame = frame.filter(pl.col("pair_id").is_in(list(pair_ids)))
    out: dict[str, PreferenceAttributes] = {}
    for row in frame.collect().to_dicts():
        pair_id = row.pop("pair_id")
        row.pop("model", None)
        try:
            out[pair_id] = PreferenceAttributes(**row)
        except ValueError as exc:
            log.warning("attributes row %s: ignored (%s)", pair_id, exc.errors()[0]["msg"])  # type: ignore[attr-defined]
    return out


def _judgments(ws: Workspace, pair_ids: set[str]) -> list[Judgment]:
    import polars as pl

    from schemas.labels import JUDGMENTS_SCHEMA, Judgment

    if not ws.has_table("judgments") or not pair_ids:
        return []
    frame = ws.scan("judgments", schema=JUDGMENTS_SCHEMA).filter(pl.col("pair_id").is_in(list(pair_ids)))
    return [Judgment(**{k: v for k, v in r.items() if v is not None}) for r in frame.collect().to_dicts()]


def push_priority(attributes: pl.LazyFrame) -> pl.LazyFrame:
    """(pair_id, priority) of attribute rows, so a pool's attributes are ranked without building
    an object per pair: `PreferenceAttributes.priority` of each (objectivity, controversiality),
    asked of the model once per combination, and `NO_ATTRIBUTES_PRIORITY` for a row whose other
    fields would not validate (as a pair without attributes)."""
    import polars as pl

    from annotation.settings import NO_ATTRIBUTES_PRIORITY
    from schemas.attributes import Controversiality, Objectivity, PreferenceAttributes

    by_pair = {f"{o.value}|{c.value}": PreferenceAttributes(
        task_category="other", objectivity=o, controversiality=c, desired_attributes=["-"], guideline="-",
    ).priority() for o in Objectivity for c in Controversiality}
    combination = pl.concat_str("objectivity", pl.lit("|"), "controversiality")
    valid = (pl.col("task_category").is_not_null()
             & pl.col("desired_attributes").list.len().is_between(1, 8)
             & (pl.col("guideline").str.len_chars() >= 1)).fill_null(False)
    priority = combination.replace_strict(by_pair, default=NO_ATTRIBUTES_PRIORITY, return_dtype=pl.Int32)
    return attributes.select("pair_id", priority=pl.when(valid).then(priority)
                             .otherwise(NO_ATTRIBUTES_PRIORITY).cast(pl.Int32))


def select_for_push(
    ws: Workspace, *, limit: int | None, exclude: set[str] = frozenset(), include_verified: bool = False,
    rows_per_partition: int | None = None,
) -> list[str]:
    """Active-pool pair_ids in protocol order (objective, low controversy first, then pair_id),
    minus verified ones and `exclude` (pairs already in Argilla, so `--limit N` twice sends the
    next N).

    The pool is ranked one partition at a time and only the best `limit` so far are kept, so the
    command holds a partition and its attributes, never the pool's (it used to build an
    attributes object for every pair of the pool). A pair's first attributes row ranks it.
    """
    import polars as pl

    from annotation.settings import NO_ATTRIBUTES_PRIORITY
    from pipeline.covers import scan_meeting
    from pipeline.partitions import ROWS_PER_PARTITION, plan_partitions, read_partition
    from pipeline.pool import ids_in_tables
    from schemas.attributes import ATTRIBUTES_SCHEMA

    skip = pl.Series("pair_id", sorted(exclude), pl.String)
    best = pl.DataFrame(schema={"pair_id": pl.String, "priority": pl.Int32})
    for partition in plan_partitions(ws, rows_per_partition or ROWS_PER_PARTITION):
        frames = list(read_partition(ws, partition, ["pair_id"]))
        if not frames:
            continue
        ids = pl.concat(frames)["pair_id"].unique()
        ids = ids.filter(~ids.is_in(skip.implode()))
        if not include_verified:
            ids = ids.filter(~ids.is_in(ids_in_tables(ws, ["verifications"], ids).implode()))
        ranked = pl.DataFrame({"pair_id": ids}).with_columns(
            priority=pl.lit(NO_ATTRIBUTES_PRIORITY, pl.Int32))
        if ws.has_table("attributes") and ids.len():
            rows = scan_meeting(ws, "attributes", partition, ATTRIBUTES_SCHEMA).filter(
                pl.col("pair_id").is_in(ids.implode())).collect().unique("pair_id", keep="first",
                                                                        maintain_order=True)
            ranked = ranked.update(push_priority(rows.lazy()).collect(), on="pair_id")
        best = pl.concat([best, ranked]).sort(["priority", "pair_id"])
        if limit is not None:
            best = best.head(limit)
    return best["pair_id"].to_list()


def push_to_argilla(
    ws: Workspace,
    cfg: ArgillaConfig,
    pair_ids: list[str] | None = None,
    *,
    limit: int | None = None,
    round: int = 0,
    api_url: str | None = None,
    update_existing: bool = False,
) -> PushStats:
    """Push these pairs (None: the next `limit` unverified pairs not yet in Argilla, by priority)
    with their attributes and judge votes; idempotent by pair_id."""
    from annotation.push import existing_record_ids, push_pairs
    from annotation.settings import MAX_IMAGE_FIELDS
    from pipeline.pool import load_records

    # Argilla fixes fields when a dataset is created: a workspace that stores images gets them.
    fields = MAX_IMAGE_FIELDS if ws.has_table("images") else 0
    client, dataset = open_dataset(cfg, create=True, api_url=api_url, image_fields=fields)
    if pair_ids is None:
        exclude = set() if update_existing else existing_record_ids(client, dataset)
        pair_ids = select_for_push(ws, limit=limit, exclude=exclude)
    pairs = load_records(ws, pair_ids)
    wanted = set(pair_ids)
    return push_pairs(
        client,
        dataset,
        pairs,
        _attributes(ws, wanted),
        _judgments(ws, wanted),
        round=round,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        update_existing=update_existing,
        resolve_image=lambda ref: _image_url(ref, ws),
    )


def _image_url(ref: Any, ws: Workspace) -> str | None:
    """An image as the data URL an Argilla ImageField shows (None when its bytes are unreadable)."""
    from pipeline.judges.llm import ImageUnavailable, image_data_url

    try:
        return image_data_url(ref, ws)
    except ImageUnavailable:
        return None


@dataclass(frozen=True)
class PullSummary:
    pulled: int
    new_rows: int
    discarded: int
    gold_labels: int
    records_total: int
    records_answered: int
    problems: list[str]


def _verification_rows(verifications: list[Verification]) -> list[dict[str, Any]]:
    return [
        v.model_dump(mode="python") | {"verdict": v.verdict.value, "status": v.status.value}
        for v in verifications
    ]


def pull_from_argilla(ws: Workspace, cfg: ArgillaConfig, *, api_url: str | None = None) -> PullSummary:
    """Append new verifications; rebuild the human gold labels from every verification."""
    import pyarrow as pa

    from annotation.gold import gold_labels
    from annotation.pull import pull_verifications
    from schemas.labels import LABELS_SCHEMA, VERIFICATIONS_SCHEMA, LabelOrigin, Verification

    client, dataset = open_dataset(cfg, create=False, api_url=api_url)
    result = pull_verifications(client, dataset)
    rows = pa.Table.from_pylist(_verification_rows(result.verifications), schema=VERIFICATIONS_SCHEMA)
    new_rows = ws.append(
        "verifications", rows, unique_key=["pair_id", "annotator", "record_id"], schema=VERIFICATIONS_SCHEMA
    )
    stored = [Verification(**r) for r in ws.read("verifications", schema=VERIFICATIONS_SCHEMA).to_pylist()]
    gold = [g.to_row() for g in gold_labels(stored, min_votes=cfg.min_votes)]
    others = []
    if ws.has_table("gold"):
        others = [
            r for r in ws.read("gold", schema=LABELS_SCHEMA).to_pylist() if r["origin"] != LabelOrigin.human
        ]
    ws.replace("gold", pa.Table.from_pylist(others + gold, schema=LABELS_SCHEMA), schema=LABELS_SCHEMA)
    return PullSummary(
        pulled=len(result.verifications),
        new_rows=new_rows,
        discarded=sum(1 for v in result.verifications if v.status.value == "discarded"),
        gold_labels=len(gold),
        records_total=result.records_total,
        records_answered=result.records_answered,
        problems=result.problems,
    )
