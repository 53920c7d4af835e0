"""Image-pair figures for docs/multimodal.md: an image world written out as PNG files and an
image-question JSONL, then ingest, re-ingest, exact dedup, phash near-dedup, export, `datasets` load.

    .venv/bin/python scripts/bench_multimodal.py /tmp/mmbench [pairs]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipeline.clean import exact_dedup
from pipeline.clean_images import image_near_dedup
from pipeline.export import export_curated
from pipeline.images import image_table
from pipeline.ingest import ingest_source
from pipeline.quality.world_image import ImageWorldConfig, generate_image_world
from pipeline.sources import SourceSpec
from pipeline.store import Workspace


def main(root: Path, pairs: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    t = time.perf_counter()
    world = generate_image_world(ImageWorldConfig(pairs=pairs, heldout=0, seed=0))
    print(f"world: {len(world.pool)} pairs, {len(world.images)} images in {time.perf_counter() - t:.2f} s")
    Path("img").mkdir(exist_ok=True)
    rows = []
    for r in world.pool:
        ref = r.conversation[0].images[0]
        name = f"img/{ref.sha256[:16]}.png"
        Path(name).write_bytes(world.images[ref.sha256].data)
        rows.append({"image": name, "question": r.conversation[0].content, "chosen": r.chosen,
                     "rejected": r.rejected})
    Path("world.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    ws = Workspace("ws")
    spec = SourceSpec("world.jsonl", name="image-world", license="CC0-1.0")
    s = ingest_source(ws, spec)
    print(f"ingest: {s.rows_read} rows, {s.added} added, {s.quarantined} quarantined, format {s.format}, "
          f"{s.seconds:.2f} s = {s.pairs_per_s:.0f} pairs/s; images table {image_table(ws).num_rows} rows")
    s = ingest_source(ws, spec)
    print(f"re-ingest: added {s.added}, already in pool {s.already_present}, {s.seconds:.2f} s")
    t = time.perf_counter()
    d = exact_dedup(ws)
    print(f"exact dedup: dropped {d.dropped} in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    n = image_near_dedup(ws, max_distance=6)
    print(f"phash near-dedup: examined {n.examined}, groups {n.detail['groups_compared']}, dropped "
          f"{n.dropped} in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    e = export_curated(ws, None, "out")
    size = sum(p.stat().st_size for p in Path("out/data").glob("*.parquet")) / 1e6
    print(f"export: {e.rows} rows, {e.shards} shard(s) in {time.perf_counter() - t:.2f} s; {size:.1f} MB")
    import datasets

    t = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files="out/data/*.parquet", split="train", cache_dir="hf")
    print(f"datasets load: {ds.num_rows} rows, first image {ds[0]['images'][0].size} in "
          f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mmbench"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
