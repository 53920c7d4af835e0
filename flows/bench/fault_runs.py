"""The fault matrix's measuring tools: the small curate it runs, one run as a process, and what a
resumed run is compared on (every keyed row of the tables, and the sha256 of the export's files)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "examples" / "data"
KEYS: dict[str, list[str]] = {
    "pool": ["pair_id"],
    "dropped": ["pair_id", "stage"],
    "curated": ["pair_id"],
    "gold": ["pair_id"],
    "silver": ["pair_id"],
    "judgments": ["pair_id", "judge", "sample", "order", "round"],
    "scores": ["pair_id", "round", "model"],
    "decisions": ["pair_id", "filter", "round"],
}
"""The tables compared after a resume, with the key no row may repeat."""


def small_config(data: Path, workspace: Path) -> str:
    """A curate config over ~70 bundled pairs (two HH-RLHF splits, UltraFeedback), two rounds and
    stage 2: every stage of the loop in about a minute of CPU."""
    return f"""
workspace = "{workspace}"

[[sources]]
path = "{data}/hh-rlhf/harmless-base/test.jsonl.gz"
format = "hh-rlhf"
name = "hh-rlhf/harmless-base"
license = "MIT"
limit = 30

[[sources]]
path = "{data}/hh-rlhf/helpful-base/test.jsonl.gz"
format = "hh-rlhf"
name = "hh-rlhf/helpful-base"
license = "MIT"
limit = 30

[[sources]]
path = "{data}/ultrafeedback/eval_clean.jsonl"
format = "prompt-chosen-rejected"
name = "ultrafeedback"
license = "MIT"
label_source = "ai"
limit = 12

[clean]
benchmarks = ["{data}/llmbar-natural/dataset.json"]

[attributes]
enabled = true
kind = "heuristic"

[rm]
kind = "embedding-head"
epochs = 3
hidden = 32
min_steps = 60

[[judges]]
name = "gold-rm"
kind = "rm-workspace"

[[judges]]
name = "rules"
kind = "rule"

[loop]
iterations = 2
seed_size = 12
silver_seed_size = 16
retrieve_max = 10
shard_rows = 20
max_parallel_shards = 2
seed = 3

[stage2]
enabled = true
recycle_flips = true
"""


@dataclass
class Outcome:
    """One fault case: what was injected and what the re-run left."""

    case: str
    runs: int = 0
    faults: int = 0
    rows_lost: int = 0
    duplicates: int = 0
    extra_rows: int = 0
    identical_exports: int = 0
    exports: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not self.failures and self.rows_lost == 0 and self.duplicates == 0 and self.extra_rows == 0
                and self.identical_exports == self.exports)


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float


def run_curate(config: Path, env: dict[str, str], failpoint: str | None = None,
               timeout_s: float = 1800.0) -> Run:
    """`synpref curate --quiet` in its own process, with `failpoint` armed when given."""
    child = {k: v for k, v in env.items() if k != "SYNPREF_FAILPOINT"}
    if failpoint:
        child["SYNPREF_FAILPOINT"] = failpoint
    start = time.perf_counter()
    command = [sys.executable, "-m", "flows.cli.main", "curate", "--config", str(config), "--quiet"]
    proc = subprocess.run(command, cwd=REPO, env=child, capture_output=True, text=True, timeout=timeout_s)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)


def export_hashes(workspace: Path, out: Path) -> dict[str, str]:
    """The sha256 of every part of the workspace's `curated` table and of every file of its export
    to `out` (the shards and card that `synpref export --out` writes)."""
    from flows.export import export_workspace
    from pipeline.store import Workspace

    ws = Workspace(str(workspace))
    # The parts the run itself committed to `curated`, by position (their names are random).
    committed = {f"curated/{i:05d}": s["sha256"] for i, s in enumerate(ws.manifest("curated")["shards"])}
    export_workspace(ws, "curation", str(out), shard_rows=50_000)
    return committed | {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.rglob("*")) if p.is_file()}


def table_keys(workspace: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every compared table's key tuples (one per row, repeats kept)."""
    from pipeline.store import Workspace

    ws = Workspace(str(workspace))
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name, key in KEYS.items():
        if ws.has_table(name):
            out[name] = [tuple(row) for row in zip(*(ws.read(name, columns=key).column(c).to_pylist()
                                                     for c in key), strict=True)]
        else:
            out[name] = []
    return out


def compare_rows(reference: dict[str, list[tuple[Any, ...]]], resumed: dict[str, list[tuple[Any, ...]]]
                 ) -> tuple[int, int, int]:
    """(rows lost, duplicate rows, extra rows) of `resumed` against `reference`, over every table."""
    lost = duplicates = extra = 0
    for name, ref_keys in reference.items():
        got = resumed.get(name, [])
        lost += len(set(ref_keys) - set(got))
        extra += len(set(got) - set(ref_keys))
        duplicates += len(got) - len(set(got))
    return lost, duplicates, extra


def damaged(workspace: Path) -> list[str]:
    """The workspace's damaged parts (orphans are harmless and not listed)."""
    from pipeline.store import Workspace

    return [f"{p.table}/{p.file}: {p.kind}" for p in Workspace(str(workspace)).verify() if p.damaged]


@dataclass
class Reference:
    """The uninterrupted run every resumed one is compared with."""

    workspace: Path
    write_events: int
    keys: dict[str, list[tuple[Any, ...]]]
    export: dict[str, str]
    seconds: float


def reference_run(data: Path, folder: Path, env: dict[str, str]) -> Reference:
    """Run the small curate uninterrupted, in counting mode: its write events, rows and export."""
    from pipeline.failpoints import count_events

    folder.mkdir(parents=True, exist_ok=True)
    workspace = folder / "reference"
    config = folder / "reference.toml"
    config.write_text(small_config(data, workspace))
    log = folder / "reference-events.log"
    run = run_curate(config, env, f"count:{log}")
    if run.returncode != 0:
        raise RuntimeError(f"the uninterrupted curate failed (rc {run.returncode}):\n{run.output[-3000:]}")
    hashes = export_hashes(workspace, folder / "reference-export")
    return Reference(workspace, count_events(str(log)), table_keys(workspace), hashes, run.seconds)
