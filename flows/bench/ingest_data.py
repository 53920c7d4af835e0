"""The generated pool for `synpref bench ingest`, and the naive baseline it is compared against.

The pool is prompt/chosen/rejected JSONL of about 1 KB per pair with known defects: exact repeats
(caught at ingest), repeats differing only in case and spacing (caught by exact dedup), prompts
that quote a benchmark item (caught by decontamination) and a few malformed lines (quarantined).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

EXACT_REPEAT_EVERY = 50  # 2%
CASE_REPEAT_EVERY = 33  # ~3%
CONTAMINATED_EVERY = 200  # 0.5%
MALFORMED_LINES = 10
BENCHMARK_ITEMS = 1000


def generate(out_dir: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """Write `pool.jsonl` (pairs rows) and `benchmark.json` (LLMBar format); reuse them if present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, bench = out_dir / f"pool-{pairs}-{seed}.jsonl", out_dir / f"benchmark-{seed}.json"
    if pool.exists() and bench.exists():
        return pool, bench
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=8000)]
    sentences = [" ".join(vocab[i] for i in rng.integers(0, len(vocab), size=int(k))).capitalize() + "."
                 for k in rng.integers(6, 18, size=30_000)]
    # benchmark items use words of their own, so only the planted prompts overlap with them
    bench_vocab = [w + "q" for w in vocab]
    bench_prompts = [" ".join(bench_vocab[i] for i in rng.integers(0, len(vocab), size=int(k)))
                     for k in rng.integers(14, 40, size=BENCHMARK_ITEMS)]
    items = [{"input": p, "output_1": sentences[2 * i], "output_2": sentences[2 * i + 1], "label": 1}
             for i, p in enumerate(bench_prompts)]
    tmp = bench.with_suffix(".tmp")
    tmp.write_text(json.dumps(items), encoding="utf-8")
    tmp.replace(bench)

    picks = rng.integers(0, len(sentences), size=(pairs, 14))
    malformed = set(rng.choice(pairs, size=min(MALFORMED_LINES, pairs), replace=False).tolist())
    tmp = pool.with_suffix(".tmp")
    rows: list[dict[str, str]] = []
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(pairs):
            p = picks[i]
            if i and i % EXACT_REPEAT_EVERY == 0:
                row = dict(rows[-1])
            elif i and i % CASE_REPEAT_EVERY == 0:
                last = rows[-1]
                row = {"prompt": last["prompt"].upper(), "chosen": last["chosen"] + "  ",
                       "rejected": "  " + last["rejected"]}
            else:
                prompt = f"Task {i}: " + " ".join(sentences[j] for j in p[:4])
                if i % CONTAMINATED_EVERY == 7:
                    prompt = f"Task {i}: answer this. " + bench_prompts[i % BENCHMARK_ITEMS]
                row = {"prompt": prompt, "chosen": " ".join(sentences[j] for j in p[4:10]),
                       "rejected": " ".join(sentences[j] for j in p[10:14])}
            rows = [row]
            fh.write('{"prompt": "broken\n' if i in malformed else json.dumps(row) + "\n")
    tmp.replace(pool)
    return pool, bench


_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def naive_run(pool: Path, bench: Path, n: int = 13, limit: int | None = None) -> dict[str, Any]:
    """The same work the way a quick script does it: pandas, row-wise Python, 13-gram tuple sets.

    `limit` reads only the first lines, to keep the slow way's run time and memory in bounds.
    """
    import pandas as pd

    from schemas.pair import compute_pair_id

    steps: dict[str, float] = {}
    cpu: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = []
    with open(pool, encoding="utf-8") as fh:
        read = 0
        for line in fh:
            if limit is not None and read >= limit:
                break
            read += 1
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    frame = pd.DataFrame(rows)
    del rows
    frame = frame[frame["chosen"].str.strip().str.len() > 0]
    frame = frame[frame["rejected"].str.strip().str.len() > 0]
    frame["pair_id"] = [compute_pair_id([{"role": "user", "content": p}], c, r)
                        for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"], strict=True)]
    frame = frame.drop_duplicates("pair_id")
    frame.to_parquet(pool.with_suffix(".naive.parquet"), compression="zstd")
    steps["ingest"] = time.perf_counter() - start
    cpu["ingest"] = time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    keys = [_SPACE.sub("", f"{p}\x1d{c}\x1d{r}".lower()) for p, c, r in
            zip(frame["prompt"], frame["chosen"], frame["rejected"], strict=True)]
    frame = frame.assign(key=keys).drop_duplicates("key")
    steps["exact dedup"] = time.perf_counter() - start
    cpu["exact dedup"] = time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    grams: set[tuple[str, ...]] = set()
    for item in json.loads(bench.read_text(encoding="utf-8")):
        words = _WORD.findall(item["input"].lower())
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    hits = []
    for prompt in frame["prompt"]:
        words = _WORD.findall(prompt.lower())
        hits.append(any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1)))
    frame = frame[~np.array(hits, dtype=bool)]
    steps["decontamination"] = time.perf_counter() - start
    cpu["decontamination"] = time.process_time() - cpu_start
    pool.with_suffix(".naive.parquet").unlink(missing_ok=True)
    return {"steps": steps, "cpu": cpu, "kept": len(frame), "pairs": read}
