"""Evaluate a reward model on benchmark files: pairwise accuracy, Best-of-N, length bias.

Pairwise files are anything `pipeline.sources.load_pairs` reads (RewardBench-style
prompt/chosen/rejected/subset, LLMBar, PandaLM, OffsetBias, ...). Best-of-N files hold one prompt
and N responses per row: `responses` ranked best first (or with `scores`, higher is better), or
`chosen` / `rejected` lists (a hit is the top-scored response being a chosen one). Every
accuracy carries a percentile bootstrap confidence interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.rm.base import Example, RewardModel
from schemas.errors import InputError
from schemas.pair import Message, PairRecord

SUBSET_KEYS = ("subset", "category", "bias", "task_category", "type")
"""Row fields (kept in a pair's meta by the readers) that name a benchmark's subset."""


@dataclass
class Accuracy:
    accuracy: float
    low: float
    high: float
    n: int


@dataclass
class EvalReport:
    model: dict[str, Any]
    overall: Accuracy | None
    by_source: dict[str, Accuracy] = field(default_factory=dict)
    by_subset: dict[str, dict[str, Accuracy]] = field(default_factory=dict)
    length_bias: dict[str, Accuracy] = field(default_factory=dict)
    best_of_n: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def bootstrap_accuracy(correct: np.ndarray, *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> Accuracy:
    """Mean of per-item credit (1, 0.5 for a tie, 0) with a percentile bootstrap interval."""
    n = len(correct)
    if n == 0:
        return Accuracy(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2
    return Accuracy(float(correct.mean()), float(np.quantile(means, tail)),
                    float(np.quantile(means, 1 - tail)), n)


def _credit(scores: np.ndarray) -> np.ndarray:
    diff = scores[:, 0] - scores[:, 1]
    return (diff > 0).astype(np.float64) + 0.5 * (diff == 0)


def _subset(meta: dict[str, Any]) -> str:
    for key in SUBSET_KEYS:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return "all"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        return [r for r in data if isinstance(r, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


GENERIC_STEMS = {"dataset", "data", "test", "train", "eval", "validation", "dev"}


def _source_name(path: Path) -> str | None:
    """`LLMBar/Natural` for .../LLMBar/Natural/dataset.json; None leaves the reader's own name."""
    stem = path.name.split(".")[0]
    if stem.lower() in GENERIC_STEMS and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.parent.name}"
    return None


def is_best_of_n_file(path: str | Path) -> bool:
    """A file whose first row has a list of responses, or chosen/rejected lists of strings."""
    path = Path(path)
    if path.suffix not in {".json", ".jsonl", ".gz"} or path.is_dir():
        return False
    try:
        rows = _read_rows(path)
    except (OSError, ValueError):
        return False
    if not rows:
        return False
    row = rows[0]
    if isinstance(row.get("responses"), list):
        return True
    return all(isinstance(row.get(k), list) and all(isinstance(x, str) for x in row[k])
               for k in ("chosen", "rejected"))


def _prompt_messages(prompt: Any, where: str) -> tuple[Message, ...]:
    if isinstance(prompt, str):
        return (Message(role="user", content=prompt),)
    if isinstance(prompt, list):
        return tuple(Message(role=m["role"], content=m["content"]) for m in prompt)
    raise InputError(f"{where}: field 'prompt' must be a string or a list of messages")


def _best_of_n_items(path: Path) -> list[tuple[tuple[Message, ...], list[str], set[int]]]:
    """(conversation, responses, indices of the best responses) per row."""
    items = []
    for i, row in enumerate(_read_rows(path)):
        where = f"{path} row {i}"
        conversation = _prompt_messages(row.get("prompt"), where)
        if isinstance(row.get("responses"), list):
            responses = [str(r) for r in row["responses"]]
            scores = row.get("scores") or row.get("ratings")
            if scores is not None:
                if len(scores) != len(responses):
                    raise InputError(f"{where}: field 'scores' has {len(scores)} values for "
                                     f"{len(responses)} responses")
                top = max(scores)
                best = {j for j, s in enumerate(scores) if s == top}
            else:
                best = {0}
        else:
            chosen, rejected = list(row["chosen"]), list(row["rejected"])
            responses = [*chosen, *rejected]
            best = set(range(len(chosen)))
        if len(responses) < 2:
            raise InputError(f"{where}: field 'responses' needs at least two responses")
        items.append((conversation, responses, best))
    return items


def _score_responses(model: RewardModel, conversation: tuple[Message, ...],
                     responses: list[str]) -> np.ndarray:
    # Responses go in as (chosen, rejected) pairs of two so each is scored once.
    padded = responses + responses[-1:] if len(responses) % 2 else responses
    pairs = [Example(conversation, padded[j], padded[j + 1]) for j in range(0, len(padded), 2)]
    return model.score(pairs).reshape(-1)[: len(responses)]


def evaluate_best_of_n(model: RewardModel, path: str | Path, *, resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    items = _best_of_n_items(Path(path))
    hits = np.array([float(int(np.argmax(_score_responses(model, conv, resp))) in best)
                     for conv, resp, best in items])
    n_sizes = sorted({len(resp) for _, resp, _ in items})
    result = asdict(bootstrap_accuracy(hits, resamples=resamples, seed=seed))
    result["responses_per_prompt"] = n_sizes
    result["chance"] = float(np.mean([len(best) / len(resp) for _, resp, best in items])) if items else 0.0
    return result


def evaluate(model: RewardModel, files: Sequence[str | Path], *, resamples: int = 1000,
             seed: int = 0, limit: int | None = None) -> EvalReport:
    """Accuracy of `model` over `files`, overall, per source, per subset, by length; Best-of-N."""
    from pipeline.sources import load_pairs

    report = EvalReport(model=model.describe(), overall=None)
    records: list[PairRecord] = []
    for file in files:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"evaluation file not found: {path}")
        if is_best_of_n_file(path):
            report.best_of_n[str(path)] = evaluate_best_of_n(model, path, resamples=resamples, seed=seed)
            report.files.append({"path": str(path), "format": "best-of-n",
                                 "prompts": report.best_of_n[str(path)]["n"]})
            continue
        loaded = load_pairs(str(path), name=_source_name(path), limit=limit)
        rows = [PairRecord.from_row(r) for r in loaded.pairs.to_pylist()]
        records.extend(rows)
        report.files.append({"path": str(path), "format": loaded.format, "pairs": len(rows),
                             "quarantined": loaded.quarantine.num_rows, "dropped": loaded.dropped.num_rows})
    if not records:
        return report
    credit = _credit(model.score(records))

    def acc(mask: np.ndarray) -> Accuracy:
        return bootstrap_accuracy(credit[mask], resamples=resamples, seed=seed)

    report.overall = acc(np.ones(len(records), dtype=bool))
    sources = np.array([r.source for r in records])
    subsets = np.array([_subset(r.meta) for r in records])
    for source in sorted(set(sources)):
        in_source = sources == source
        report.by_source[source] = acc(in_source)
        report.by_subset[source] = {
            s: acc(in_source & (subsets == s)) for s in sorted(set(subsets[in_source]))
        }
    chosen_len = np.array([len(r.chosen) for r in records])
    rejected_len = np.array([len(r.rejected) for r in records])
    report.length_bias = {"chosen_longer": acc(chosen_len > rejected_len),
                          "chosen_shorter": acc(chosen_len < rejected_len)}
    return report


def plot_report(report: EvalReport, path: str | Path) -> Path:
    """A PNG of the report: accuracy per source and subset, length bias, Best-of-N (with CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, Accuracy]] = []
    if report.overall is not None:
        bars.append(("overall", report.overall))
    for source, acc in report.by_source.items():
        bars.append((source, acc))
        subsets = report.by_subset.get(source, {})
        if len(subsets) > 1:
            bars.extend((f"  {source}: {name}", a) for name, a in subsets.items())
    bars.extend((f"length: {k.replace('_', ' ')}", a) for k, a in report.length_bias.items())
    bars.extend((f"best-of-{'/'.join(map(str, b['responses_per_prompt']))}: {Path(f).name}",
                 Accuracy(b["accuracy"], b["low"], b["high"], b["n"])) for f, b in report.best_of_n.items())
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(bars), 3) + 1.2))
    labels = [f"{name} (n={a.n})" for name, a in bars]
    values = np.array([a.accuracy for _, a in bars])
    errors = np.array([[a.accuracy - a.low, a.high - a.accuracy] for _, a in bars]).T if bars else None
    ax.barh(range(len(bars)), values, xerr=errors, color="#4C72B0", ecolor="#333333", capsize=3)
    ax.axvline(0.5, color="#C44E52", linestyle="--", linewidth=1, label="chance (pairs)")
    ax.set_yticks(range(len(bars)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"reward model: {report.model.get('name') or report.model.get('base_model')}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
