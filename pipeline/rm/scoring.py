"""Scoring: token ids -> raw rewards (vLLM's pooling runner or a transformers loop), and the
`scores` table of the workspace (pair_id, round, model, r_chosen, r_rejected, p).

vLLM is used where it is installed and allowed (`rm.scorer`), on the GPU when CUDA is present;
its classify call with use_activation=False returns the raw scalar, the same number the
transformers model's logit gives. Pool scoring writes one shard per chunk, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.models import cuda_available, torch_device
from pipeline.rm.base import ProgressFn, preference_probability
from schemas.config.rm import RMConfig
from schemas.errors import ConfigError, InputError
from schemas.labels import SCORES_SCHEMA
from schemas.pair import PairRecord

if TYPE_CHECKING:
    from pipeline.rm.base import RewardModel
    from pipeline.store import Workspace

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache of a CPU vLLM scorer: ample for prefill-only batches of 512-token inputs."""


def _split(flat: np.ndarray, n: int) -> np.ndarray:
    return np.stack([flat[:n], flat[n:]], axis=1).astype(np.float64)


class TransformersScorer:
    """A plain transformers loop: length-sorted batches, right padding, logit 0 is the reward."""

    backend = "transformers"

    def __init__(self, model: Any, *, batch_size: int = 32, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if isinstance(model, str):
            self.device = torch_device(device)
            # bf16 halves memory on a GPU (an 8B RM fits); fp32 on the CPU keeps scores exact.
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            model = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype)
            model.to(self.device)
        else:
            self.device = str(next(model.parameters()).device)
        self.model = model
        self.batch_size = batch_size
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def score_ids(self, ids: Sequence[list[int]], progress: ProgressFn | None = None) -> np.ndarray:
        import torch

        was_training = self.model.training
        self.model.eval()
        out = np.zeros(len(ids), dtype=np.float64)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits
                out[batch] = logits[:, 0].float().cpu().numpy()
                if progress is not None:
                    progress(min(start + self.batch_size, len(order)), len(order))
        if was_training:
            self.model.train()
        return out

    def score_pairs(self, chosen: Sequence[list[int]], rejected: Sequence[list[int]],
                    progress: ProgressFn | None = None) -> np.ndarray:
        return _split(self.score_ids([*chosen, *rejected], progress), len(chosen))

    def close(self) -> None:
        self.model = None


class VLLMScorer:
    """vLLM's pooling runner; one engine per scorer, released by close()."""

    backend = "vllm"

    def __init__(self, path: str, *, max_length: int, gpu_memory_utilization: float = 0.3,
                 dtype: str | None = None) -> None:
        from vllm import LLM

        gpu = cuda_available()
        # fp32 on the CPU so scores match the trained weights; the checkpoint's dtype on a GPU.
        dtype = dtype or ("auto" if gpu else "float32")
        # On the CPU, a fixed KV-cache size: a reward model only prefills, and a share of a busy
        # host's memory may not be free. Eager mode skips minutes of compilation there.
        cpu_only = {} if gpu else {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True}
        self.llm = LLM(model=path, runner="pooling", max_model_len=max_length, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, **cpu_only)

    def score_ids(self, ids: Sequence[list[int]], progress: ProgressFn | None = None) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        out = np.zeros(len(ids), dtype=np.float64)
        step = 4096
        for start in range(0, len(ids), step):
            prompts = [TokensPrompt(prompt_token_ids=list(i)) for i in ids[start : start + step]]
            results = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False),
                                        use_tqdm=False)
            out[start : start + len(prompts)] = [float(r.outputs.probs[0]) for r in results]
            if progress is not None:
                progress(min(start + step, len(ids)), len(ids))
        return out

    def score_pairs(self, chosen: Sequence[list[int]], rejected: Sequence[list[int]],
                    progress: ProgressFn | None = None) -> np.ndarray:
        return _split(self.score_ids([*chosen, *rejected], progress), len(chosen))

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_scorer(path: str, cfg: RMConfig) -> TransformersScorer | VLLMScorer:
    """The scorer `rm.scorer` asks for: vllm, transformers, or auto (vLLM when installed and it loads)."""
    if cfg.scorer not in {"auto", "vllm", "transformers"}:
        raise ConfigError(f"rm.scorer: unknown scorer {cfg.scorer!r} (expected auto, vllm or transformers)")
    if cfg.scorer == "vllm" or (cfg.scorer == "auto" and vllm_installed()):
        try:
            return VLLMScorer(path, max_length=cfg.max_length,
                              gpu_memory_utilization=cfg.gpu_memory_utilization)
        except Exception as exc:  # an architecture vLLM lacks still scores through transformers
            if cfg.scorer == "vllm":
                raise
            log.warning("vLLM could not load %s (%s); scoring with transformers", path, exc)
    return TransformersScorer(path, batch_size=cfg.score_batch_size)


def score_counting_cuts(model: RewardModel, records: Sequence[PairRecord]) -> tuple[np.ndarray, Counter[str]]:
    """`model.score(records)` and the inputs cut to fit the model on the way, with the keys
    training reports: `history` / `response` for a sequence classifier (its token budget),
    `responses_cut_by_encoder` for an embedding head (responses past what the encoder reads).

    A model that counts its own cuts says so with a `score_counting_cuts` method (the sequence
    classifier does), so this module never imports the model classes built on its scorers.
    """
    from pipeline.rm.embedding_head import EmbeddingHeadRM

    own = getattr(model, "score_counting_cuts", None)
    if callable(own):
        return own(records)
    scores = model.score(records)
    if isinstance(model, EmbeddingHeadRM):
        long = model.encoder.too_long([r.chosen for r in records] + [r.rejected for r in records])
        return scores, Counter({"responses_cut_by_encoder": long} if long else {})
    return scores, Counter()


def score_pairs(
    ws: Workspace,
    model: RewardModel,
    round: int,
    pair_ids: Sequence[str] | None = None,
    model_name: str = "",
    *,
    chunk_size: int = 2048,
    progress: ProgressFn | None = None,
    truncation: Counter[str] | None = None,
) -> int:
    """Score the active pool (or `pair_ids`) into `scores`; returns the number of rows written.

    Pairs already scored for this round by this model are skipped, so a re-run only finishes
    what a killed run left. A `truncation` counter, when given, gains the inputs cut to fit the
    model while scoring, counted as training counts them (`score_counting_cuts`).
    """
    name = model_name or model.name or model.kind
    pool = ws.scan("pool")
    if ws.has_table("dropped") and ws.row_count("dropped"):
        pool = pool.join(ws.scan("dropped").select("pair_id").unique(), on="pair_id", how="anti")
    wanted = pool.select("pair_id")
    if pair_ids is not None:
        selection = pl.DataFrame({"pair_id": list(pair_ids)}, schema={"pair_id": pl.String}).unique()
        missing = selection.join(wanted.collect(), on="pair_id", how="anti")
        if missing.height:
            raise InputError(f"score_pairs: {missing.height} pair_ids are not in the active pool, "
                             f"e.g. {missing['pair_id'][0]}")
        wanted = selection.lazy()
    if ws.has_table("scores") and ws.row_count("scores"):
        done = (ws.scan("scores").filter((pl.col("round") == round) & (pl.col("model") == name))
                .select("pair_id"))
        wanted = wanted.join(done, on="pair_id", how="anti")
    todo = wanted.unique(maintain_order=True).collect()["pair_id"].to_list()
    written = 0
    for start in range(0, len(todo), chunk_size):
        ids = todo[start : start + chunk_size]
        rows = pool.filter(pl.col("pair_id").is_in(ids)).collect()
        records = [PairRecord.from_row(r) for r in rows.to_dicts()]
        scores, cuts = score_counting_cuts(model, records)
        if truncation is not None:
            truncation.update(cuts)
        table = pa.table({
            "pair_id": [r.pair_id for r in records],
            "round": [round] * len(records),
            "model": [name] * len(records),
            "r_chosen": scores[:, 0],
            "r_rejected": scores[:, 1],
            "p": preference_probability(scores),
        })
        written += ws.append("scores", table, unique_key=["pair_id", "round", "model"], schema=SCORES_SCHEMA)
        if progress is not None:
            progress(min(start + chunk_size, len(todo)), len(todo))
    return written
