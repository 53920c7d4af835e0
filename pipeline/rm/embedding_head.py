"""The embedded-default reward model: a frozen sentence encoder and a small trained head.

The conversation and each response are embedded separately (the conversation's oldest text is
cut first, the response is kept whole up to the encoder's limit), and a linear or MLP head over
[e_conv, e_resp, e_conv * e_resp] gives the reward. Only the head trains, on cached embeddings,
so a few thousand pairs train on the CPU in seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from pipeline.rm.base import (
    Checkpoint,
    FitResult,
    PairLike,
    ProgressFn,
    RewardModel,
    bt_loss,
    mean_bt_loss,
    pairwise_accuracy,
)
from schemas.config.embed import EmbedConfig
from schemas.config.rm import RMConfig
from schemas.errors import ConfigError
from schemas.pair import render_conversation

CONVERSATION_CHARS = 2000
"""Conversation text kept for the encoder (newest end); MiniLM reads ~256 tokens anyway."""
CACHE_MAX_TEXTS = 300_000
"""Embeddings kept in memory per encoder (~450 MB at 384 dimensions)."""
_SHARED_CACHES: dict[tuple[str, str], dict[str, np.ndarray]] = {}


class TextEncoder:
    """The frozen sentence encoder (pipeline.embed.Encoder) with an in-memory cache keyed by the
    text's hash, so a pool scored every round and re-used for training is encoded once."""

    def __init__(self, model: str, backend: str = "torch", batch_size: int = 64) -> None:
        self.model_name = model
        self.backend = backend
        self.batch_size = batch_size
        # Shared by every model on the same encoder in this process: each round's RM re-reads the pool.
        self._cache = _SHARED_CACHES.setdefault((model, backend), {})
        self._encoder: Any = None

    def _load(self) -> Any:
        if self._encoder is None:
            from pipeline.embed import Encoder

            self._encoder = Encoder(EmbedConfig(model=self.model_name, backend=self.backend,
                                                batch_size=self.batch_size))
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self._load().dim)

    def too_long(self, texts: Sequence[str]) -> int:
        """How many texts run past what the encoder reads (they are cut at its end)."""
        budget = self._load().char_budget
        return sum(len(t) > budget for t in texts)

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per text; repeated texts are encoded once."""
        keys = [xxhash.xxh3_64_hexdigest(t.encode("utf-8")) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = self._load().encode(list(missing.values()), progress=progress)
            fresh = dict(zip(missing.keys(), vectors, strict=True))
        out = np.stack([fresh[k] if k in fresh else self._cache[k] for k in keys])
        if len(self._cache) + len(fresh) > CACHE_MAX_TEXTS:
            self._cache.clear()
        self._cache.update(fresh)
        return out


def clear_embedding_cache() -> None:
    """Forget every cached embedding of this process (benchmarks measure a cold encoder)."""
    for cache in _SHARED_CACHES.values():
        cache.clear()


def _build_head(kind: str, in_dim: int, hidden: int):
    from torch import nn

    if kind == "linear":
        return nn.Linear(in_dim, 1)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
    raise ConfigError(f"rm.head: unknown head {kind!r} (expected linear or mlp)")


class EmbeddingHeadRM(RewardModel):
    """Frozen encoder + Bradley-Terry head; see the module docstring."""

    kind = "embedding-head"

    def __init__(self, cfg: RMConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__(cfg)
        self.encoder = encoder or TextEncoder(cfg.base_model, cfg.encoder_backend)
        self.head: Any = None
        self.truncation: dict[str, int] = {}

    # -- features ------------------------------------------------------------------------

    def features(self, records: Sequence[PairLike], progress: ProgressFn | None = None):
        """(chosen, rejected) feature tensors of shape (n, 3 * dim)."""
        import torch

        conversations = [render_conversation(r.conversation, max_chars=CONVERSATION_CHARS) for r in records]
        texts = conversations + [r.chosen for r in records] + [r.rejected for r in records]
        vectors = torch.from_numpy(self.encoder.encode(texts, progress=progress))
        n = len(records)
        conv, chosen, rejected = vectors[:n], vectors[n : 2 * n], vectors[2 * n :]
        return (
            torch.cat([conv, chosen, conv * chosen], dim=1),
            torch.cat([conv, rejected, conv * rejected], dim=1),
        )

    def _ensure_head(self, in_dim: int) -> None:
        if self.head is None:
            self.head = _build_head(self.cfg.head, in_dim, self.cfg.hidden)

    def _rewards(self, x_chosen, x_rejected) -> np.ndarray:
        import torch

        self.head.eval()
        with torch.no_grad():
            rc = self.head(x_chosen).squeeze(-1)
            rr = self.head(x_rejected).squeeze(-1)
        return torch.stack([rc, rr], dim=1).double().numpy()

    # -- interface -----------------------------------------------------------------------

    def fit(self, train: Sequence[PairLike], gold: Sequence[PairLike] | None = None) -> FitResult:
        import torch

        if not train:
            raise ValueError("no training pairs")
        started = time.perf_counter()
        torch.manual_seed(self.cfg.seed)
        xc, xr = self.features(train)
        gold_x = self.features(gold) if gold else None
        long_responses = self.encoder.too_long([r.chosen for r in train] + [r.rejected for r in train])
        self.truncation = {"responses_cut_by_encoder": long_responses}
        self.head = None
        self._ensure_head(xc.shape[1])
        optimizer = torch.optim.AdamW(
            self.head.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        generator = torch.Generator().manual_seed(self.cfg.seed)
        result = FitResult(train_pairs=len(train), truncation=dict(self.truncation))
        best_state: dict[str, Any] | None = None
        step = 0
        batches_per_epoch = math.ceil(len(train) / self.cfg.batch_size)
        epochs = max(self.cfg.epochs, math.ceil(self.cfg.min_steps / batches_per_epoch))
        for epoch in range(1, epochs + 1):
            self.head.train()
            order = torch.randperm(len(train), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(train), self.cfg.batch_size):
                idx = order[start : start + self.cfg.batch_size]
                loss = bt_loss(self.head(xc[idx]).squeeze(-1), self.head(xr[idx]).squeeze(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
                step += 1
            checkpoint = Checkpoint(epoch=float(epoch), step=step, train_loss=total / max(batches, 1))
            if gold_x is not None:
                scores = self._rewards(*gold_x)
                checkpoint.gold_accuracy = pairwise_accuracy(scores)
                checkpoint.gold_loss = mean_bt_loss(scores)
            result.checkpoints.append(checkpoint)
            if checkpoint.better_than(result.best):
                result.best = checkpoint
                best_state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        if best_state is not None:
            self.head.load_state_dict(best_state)
        result.seconds = time.perf_counter() - started
        return result

    def score(self, records: Sequence[PairLike], *, progress: ProgressFn | None = None) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("the reward model has not been trained or loaded")
        if not records:
            return np.zeros((0, 2), dtype=np.float64)
        return self._rewards(*self.features(records, progress=progress))

    def save(self, directory: Path) -> None:
        import torch

        if self.head is None:
            raise RuntimeError("nothing to save: the reward model has not been trained")
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), directory / "head.pt")
        in_dim = next(self.head.parameters()).shape[-1]
        meta = {"kind": self.kind, "encoder": self.cfg.base_model, "head": self.cfg.head,
                "encoder_backend": self.cfg.encoder_backend,
                "hidden": self.cfg.hidden, "in_dim": int(in_dim)}
        (directory / "head.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, cfg: RMConfig) -> EmbeddingHeadRM:
        import torch

        meta = json.loads((directory / "head.json").read_text())
        model = cls(cfg.model_copy(update={"base_model": meta["encoder"], "head": meta["head"],
                                           "hidden": meta["hidden"],
                                           "encoder_backend": meta.get("encoder_backend", "torch")}))
        model._ensure_head(meta["in_dim"])
        model.head.load_state_dict(torch.load(directory / "head.pt", weights_only=True))
        model.head.eval()
        return model
