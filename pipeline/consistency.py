"""Which pairs the loop looks at first, and which labels survive stage 2.

Pure functions over polars frames, so every decision can be tested on constructed cases and
recorded as a row of the `decisions` table (DECISIONS_SCHEMA) with its filter and reason:

- `choose_priority_batch`: the stage-1 seed / priority batch (objective, low-controversy pairs
  first, spread across sources and task categories, reproducible from a seed);
- `filter_a`: pairs the current best RM already gets right (p > 0.5) are not relabeled; the rest
  go to retrieval + LLM judges;
- `filter_b`: a pair keeps its original label only if the gold RM agrees AND either the judges or
  the best RM agree;
- `recycle_flips`: a discarded pair whose flipped orientation passes filter B is kept flipped;
- `final_decisions` / `curated_selection`: one outcome per pair, in the shape the export reads.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import xxhash

from schemas.labels import DECISIONS_SCHEMA

STAGE2 = "stage2"
THRESHOLD = 0.5

_OBJECTIVITY_RANK = {"objective": 0, "subjective": 1}
_CONTROVERSY_RANK = {"low": 0, "medium": 1, "high": 2}


def seeded_order(pair_ids: list[str], seed: int) -> list[int]:
    """A stable pseudo-random rank per pair: the same on every machine for the same seed."""
    return [xxhash.xxh3_64_intdigest(f"{seed}:{pid}".encode()) for pid in pair_ids]


def choose_priority_batch(
    candidates: pl.DataFrame,
    size: int,
    seed: int,
    *,
    exclude: set[str] | None = None,
) -> pl.DataFrame:
    """The next batch to verify: objective, low-controversy pairs first, diverse, seeded.

    `candidates` needs `pair_id` and `source`; `task_category`, `objectivity` and
    `controversiality` are used when present (missing attributes rank as subjective / medium).
    Within one priority tier the batch takes pairs round-robin over (source, task category)
    strata, so a small batch still covers every source and category. Returns the chosen rows
    in batch order with a `priority` column.
    """
    frame = _ranked(candidates, seed, exclude)
    if size <= 0 or frame.height == 0:
        return frame.head(0).drop(["_shuffle", "_stratum"])
    # Rank inside each (tier, stratum), then interleave the strata: the i-th pick of every
    # stratum comes before the (i+1)-th pick of any.
    frame = frame.with_columns(
        _turn=pl.col("_shuffle").rank("ordinal").over(["priority", "_stratum"]),
        _stratum_key=pl.col("_stratum").map_elements(
            lambda s: xxhash.xxh3_64_intdigest(f"{seed}:{s}".encode()), return_dtype=pl.UInt64
        ),
    )
    batch = frame.sort(["priority", "_turn", "_stratum_key", "_shuffle"]).head(size)
    return batch.drop(["_shuffle", "_stratum", "_turn", "_stratum_key"])


def priority_candidates(candidates: pl.DataFrame, size: int, seed: int, *,
                        exclude: set[str] | None = None) -> pl.DataFrame:
    """The rows of `candidates` that a batch of `size` chosen from them together with any other
    rows can take: the first `size` of each (tier, stratum) in seeded order.

    `choose_priority_batch` ranks a pair by its place in its own (tier, stratum), and a batch
    takes at most `size` pairs of one, so choosing from the candidates of every part of a pool
    gives the batch chosen from the whole pool. Partition tasks return these; the driver prunes
    what it gathers again, so it holds at most `size` rows per (tier, stratum).
    """
    frame = _ranked(candidates, seed, exclude)
    if size <= 0 or frame.height == 0:
        return frame.head(0).drop(_RANK_COLUMNS)
    frame = frame.filter(pl.col("_shuffle").rank("ordinal").over(["priority", "_stratum"]) <= size)
    return frame.sort("_shuffle").drop(_RANK_COLUMNS)


_RANK_COLUMNS = ["priority", "_shuffle", "_stratum"]


def _ranked(candidates: pl.DataFrame, seed: int, exclude: set[str] | None) -> pl.DataFrame:
    """Candidates less `exclude`, one row per pair, with their tier (`priority`), seeded order
    (`_shuffle`) and stratum (source and task category)."""
    frame = candidates
    if exclude:
        frame = frame.filter(~pl.col("pair_id").is_in(list(exclude)))
    for column in ("task_category", "objectivity", "controversiality"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    frame = frame.unique(subset="pair_id", keep="first", maintain_order=True)
    tier = pl.col("objectivity").replace_strict(_OBJECTIVITY_RANK, default=1, return_dtype=pl.Int32) * 3
    tier = tier + pl.col("controversiality").replace_strict(
        _CONTROVERSY_RANK, default=1, return_dtype=pl.Int32
    )
    return frame.with_columns(
        priority=tier,
        _shuffle=pl.Series(seeded_order(frame["pair_id"].to_list(), seed), dtype=pl.UInt64),
        _stratum=pl.concat_str(
            [pl.col("source").fill_null(""), pl.col("task_category").fill_null("")], separator="\x1f"
        ),
    )


def _decisions(frame: pl.DataFrame, filter_name: str, round_: int) -> pl.DataFrame:
    return frame.select(
        "pair_id",
        pl.lit(STAGE2).alias("stage"),
        pl.lit(filter_name).alias("filter"),
        "decision",
        "reason",
        pl.lit(round_, dtype=pl.Int32).alias("round"),
    )


def filter_a(scores: pl.DataFrame, round_: int, threshold: float = THRESHOLD) -> pl.DataFrame:
    """Filter A over `scores(pair_id, p)` of the current best RM.

    p > threshold: the RM already ranks the stored label right, so the pair is not relabeled
    (decision `drop`; filter B may still keep it). Otherwise decision `relabel`: the pair goes
    to retrieval + LLM judges.
    """
    right = pl.col("p") > threshold
    frame = scores.select("pair_id", "p").with_columns(
        decision=pl.when(right).then(pl.lit("drop")).otherwise(pl.lit("relabel")),
        reason=pl.when(right)
        .then(pl.format("best RM already right: p={} > {}", pl.col("p").round(4), pl.lit(threshold)))
        .otherwise(pl.format("best RM wrong or unsure: p={} <= {}; sent to judges",
                             pl.col("p").round(4), pl.lit(threshold))),
    )
    return _decisions(frame, "A", round_)


def _evidence(
    best: pl.DataFrame, gold: pl.DataFrame, judges: pl.DataFrame | None
) -> pl.DataFrame:
    """One row per pair: p_best, p_gold and the judges' aggregated verdict (null if unjudged)."""
    frame = best.select("pair_id", pl.col("p").alias("p_best")).join(
        gold.select("pair_id", pl.col("p").alias("p_gold")), on="pair_id", how="left",
        maintain_order="left",
    )
    if judges is not None and judges.height:
        frame = frame.join(
            judges.select("pair_id", pl.col("verdict").alias("judges")), on="pair_id", how="left",
            maintain_order="left",
        )
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("judges"))
    missing = frame.filter(pl.col("p_gold").is_null())
    if missing.height:
        raise ValueError(
            f"gold RM scores missing for {missing.height} pairs, e.g. {missing['pair_id'][0]}"
        )
    return frame


def filter_b(
    best_scores: pl.DataFrame,
    gold_scores: pl.DataFrame,
    judge_votes: pl.DataFrame | None,
    round_: int,
    threshold: float = THRESHOLD,
) -> pl.DataFrame:
    """Filter B: keep the stored label iff gold RM agrees AND (judges OR best RM) agree.

    `best_scores` / `gold_scores`: (pair_id, p) for every candidate; `judge_votes`:
    (pair_id, verdict) from `aggregate_votes` for the pairs filter A sent to judges.
    Decisions are `keep` or `discard`, with the evidence in the reason.
    """
    ev = _evidence(best_scores, gold_scores, judge_votes)
    gold_ok = pl.col("p_gold") > threshold
    judges_ok = pl.col("judges").fill_null("") == "chosen"
    best_ok = pl.col("p_best") > threshold
    support = (
        pl.when(judges_ok & best_ok).then(pl.lit("judges and best RM"))
        .when(judges_ok).then(pl.lit("judges"))
        .when(best_ok).then(pl.lit("best RM"))
    )
    evidence = pl.format(
        "gold RM p={}, best RM p={}, judges={}",
        pl.col("p_gold").round(4), pl.col("p_best").round(4), pl.col("judges").fill_null("none"),
    )
    keep = gold_ok & (judges_ok | best_ok)
    frame = ev.with_columns(
        decision=pl.when(keep).then(pl.lit("keep")).otherwise(pl.lit("discard")),
        reason=pl.when(keep)
        .then(pl.format("label agrees with gold RM and {} ({})", support, evidence))
        .when(~gold_ok)
        .then(pl.format("gold RM disagrees ({})", evidence))
        .when(pl.col("judges").is_null())
        .then(pl.format("gold RM agrees, best RM does not, and no judge saw the pair (past "
                        "stage2.max_judged, or no judge decided it) ({})", evidence))
        .otherwise(pl.format("gold RM agrees but neither judges nor best RM do ({})", evidence)),
    )
    return _decisions(frame, "B", round_)


def recycle_flips(
    discarded: pl.DataFrame,
    best_scores: pl.DataFrame,
    gold_scores: pl.DataFrame,
    judge_votes: pl.DataFrame | None,
    round_: int,
    threshold: float = THRESHOLD,
) -> pl.DataFrame:
    """Flip-recycling of pairs filter B discarded.

    A discarded pair is kept flipped (decision `flip`) when the flipped label passes filter B:
    the gold RM prefers the stored rejected response (p_gold < 1 - threshold) AND either the
    judges say `rejected` or the best RM prefers the stored rejected too. Others: `drop`.
    """
    ev = _evidence(
        best_scores.join(discarded.select("pair_id"), on="pair_id", how="semi", maintain_order="left"),
        gold_scores, judge_votes,
    )
    flip_ok = 1.0 - threshold
    gold_flip = pl.col("p_gold") < flip_ok
    judges_flip = pl.col("judges").fill_null("") == "rejected"
    best_flip = pl.col("p_best") < flip_ok
    flip = gold_flip & (judges_flip | best_flip)
    evidence = pl.format(
        "gold RM p={}, best RM p={}, judges={}",
        pl.col("p_gold").round(4), pl.col("p_best").round(4), pl.col("judges").fill_null("none"),
    )
    frame = ev.with_columns(
        decision=pl.when(flip).then(pl.lit("flip")).otherwise(pl.lit("drop")),
        reason=pl.when(flip)
        .then(pl.format("flipped label agrees with gold RM and {} ({})",
                        pl.when(judges_flip).then(pl.lit("judges")).otherwise(pl.lit("best RM")),
                        evidence))
        .otherwise(pl.format("neither order is consistently supported ({})", evidence)),
    )
    return _decisions(frame, "recycle", round_)


def stage2_decisions(
    best_scores: pl.DataFrame,
    gold_scores: pl.DataFrame,
    judge_votes: pl.DataFrame | None,
    round_: int,
    *,
    recycle: bool,
    threshold: float = THRESHOLD,
) -> pl.DataFrame:
    """Filters A, B and (optionally) recycling for every candidate, as `decisions` rows."""
    a = filter_a(best_scores, round_, threshold)
    b = filter_b(best_scores, gold_scores, judge_votes, round_, threshold)
    parts = [a, b]
    if recycle:
        discarded = b.filter(pl.col("decision") == "discard")
        parts.append(recycle_flips(discarded, best_scores, gold_scores, judge_votes, round_, threshold))
    return pl.concat(parts, how="vertical")


def final_decisions(decisions: pl.DataFrame) -> pl.DataFrame:
    """One outcome per pair: `keep` (filter B), `abstain` (filter B had no reliable evidence: the
    stored label stays), `flip` (recycled), else `drop`.

    Returns (pair_id, decision, filter, reason, round), sorted by pair_id.
    """
    kept = decisions.filter((pl.col("filter") == "B") & pl.col("decision").is_in(["keep", "abstain"]))
    flipped = decisions.filter((pl.col("filter") == "recycle") & (pl.col("decision") == "flip"))
    outcome = pl.concat([kept, flipped], how="vertical")
    dropped = (
        decisions.filter(pl.col("filter") == "B")
        .join(outcome, on="pair_id", how="anti")
        .with_columns(decision=pl.lit("drop"))
    )
    cols = ["pair_id", "decision", "filter", "reason", "round"]
    return pl.concat([outcome.select(cols), dropped.select(cols)]).sort("pair_id")


def curated_selection(
    gold: pl.DataFrame, silver: pl.DataFrame, decisions: pl.DataFrame | None
) -> pl.DataFrame:
    """What the export writes: gold and silver labels, then the stage-2 keeps and flips.

    Columns (pair_id, flipped, origin, round, filter). A label with verdict `rejected` is the
    stored pair flipped; ties and invalid labels are not exported. A pair appears once: gold
    wins over silver, silver over stage 2.
    """
    def labelled(frame: pl.DataFrame, name: str) -> pl.DataFrame:
        return frame.filter(pl.col("verdict").is_in(["chosen", "rejected"])).select(
            "pair_id",
            (pl.col("verdict") == "rejected").alias("flipped"),
            pl.col("origin").cast(pl.String),
            pl.col("round").cast(pl.Int32),
            pl.lit(name).alias("filter"),
        )

    parts = [labelled(gold, "gold"), labelled(silver, "silver")]
    if decisions is not None and decisions.height:
        final = final_decisions(decisions).filter(pl.col("decision") != "drop")
        parts.append(
            final.select(
                "pair_id",
                (pl.col("decision") == "flip").alias("flipped"),
                pl.when(pl.col("decision") == "flip").then(pl.lit("rm")).otherwise(pl.lit("source"))
                .alias("origin"),
                pl.col("round").cast(pl.Int32),
                pl.col("filter"),
            )
        )
    out = pl.concat(parts, how="vertical").unique(subset="pair_id", keep="first", maintain_order=True)
    return out.sort(["round", "pair_id"])


def decisions_table(frame: pl.DataFrame) -> pa.Table:
    """Decisions as Arrow in DECISIONS_SCHEMA, ready for `Workspace.append`."""
    return frame.to_arrow().select(DECISIONS_SCHEMA.names).cast(DECISIONS_SCHEMA)
