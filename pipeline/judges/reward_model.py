"""Reward-model judges: a scalar reward per response, the verdict from r(chosen) - r(rejected).

`reward-model` scores any Hugging Face sequence-classification RM (e.g.
Skywork/Skywork-Reward-V2-Qwen3-0.6B) through vLLM's pooling runner with raw scores, or through
transformers where vLLM is absent; both get the same token ids, so their scores agree.
`rm-workspace` uses a reward model trained in the workspace (e.g. the gold RM), loaded lazily so
the judge can be built before that model exists.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from pipeline.models import resolve_model_path, torch_device
from schemas.attributes import PreferenceAttributes
from schemas.errors import ConfigError
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import PairRecord

from .base import Judge, LabeledExample


class PairScorer(Protocol):
    def score(self, records: list[PairRecord]) -> np.ndarray:
        """(n, 2) array: r(chosen), r(rejected) per record."""
        ...


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class SequenceClassifierScorer:
    """Scores responses with an HF sequence-classification reward model (one output)."""

    def __init__(self, model: str, *, backend: str = "auto", max_length: int = 4096,
                 batch_size: int = 16, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool = False) -> None:
        if backend not in ("auto", "vllm", "transformers"):
            raise ConfigError(f"reward-model backend must be auto, vllm or transformers, not {backend!r}")
        self.model = model
        self.path = resolve_model_path(model)
        self.backend = ("vllm" if _vllm_available() else "transformers") if backend == "auto" else backend
        self.max_length = max_length
        self.batch_size = batch_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enforce_eager = enforce_eager
        self._tokenizer: Any = None
        self._hf_model: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    def token_ids(self, pair: PairRecord, response: str) -> list[int]:
        """The conversation plus `response` as the final assistant turn, in the RM's chat format."""
        messages = [{"role": m.role.value, "content": m.content} for m in pair.conversation]
        messages.append({"role": "assistant", "content": response})
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False)
        else:
            text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # Keep the end: the response being scored matters more than the oldest turns.
        return ids[-self.max_length:]

    def score_ids(self, batch: list[list[int]]) -> np.ndarray:
        if not batch:
            return np.zeros(0, dtype=np.float64)
        if self.backend == "vllm":
            return self._score_vllm(batch)
        return self._score_transformers(batch)

    def score(self, records: list[PairRecord]) -> np.ndarray:
        ids = [self.token_ids(r, resp) for r in records for resp in (r.chosen, r.rejected)]
        return self.score_ids(ids).reshape(-1, 2)

    def _score_vllm(self, batch: list[list[int]]) -> np.ndarray:
        from vllm import PoolingParams

        from .vllm_offline import get_engine

        engine = get_engine(self.path, max_model_len=self.max_length,
                            gpu_memory_utilization=self.gpu_memory_utilization, runner="pooling",
                            enforce_eager=self.enforce_eager)
        outputs = engine.classify([{"prompt_token_ids": ids} for ids in batch],
                                  pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return np.array([o.outputs.probs[0] for o in outputs], dtype=np.float64)

    def _score_transformers(self, batch: list[list[int]]) -> np.ndarray:
        import torch

        if self._hf_model is None:
            from transformers import AutoModelForSequenceClassification

            device = torch_device("auto")
            self._hf_model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=torch.bfloat16 if device == "cuda" else torch.float32
            ).to(device).eval()
        model = self._hf_model
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else 0
        out = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(model.device),
                               attention_mask=mask.to(model.device)).logits
            out.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


class RewardModelJudge(Judge):
    """One order-free judgment per pair from a reward model's two scores."""

    kind = "reward-model"

    def __init__(self, name: str, model: str, scorer: PairScorer | None = None, **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        self._scorer = scorer
        self.scorer_kwargs: dict[str, Any] = {}

    @property
    def scorer(self) -> PairScorer:
        if self._scorer is None:
            self._scorer = SequenceClassifierScorer(self.model, **self.scorer_kwargs)
        return self._scorer

    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            scores = np.asarray(self.scorer.score(chunk), dtype=np.float64)
            if scores.shape != (len(chunk), 2):
                raise ValueError(f"judge {self.name!r}: scorer returned shape {scores.shape}, "
                                 f"expected ({len(chunk)}, 2)")
            for pair, (rc, rr) in zip(chunk, scores, strict=True):
                out.append(rm_judgment(pair.pair_id, self.name, self.model, float(rc), float(rr), round))
        return out


def rm_judgment(pair_id: str, judge: str, model: str, r_chosen: float, r_rejected: float,
                round: int) -> Judgment:
    """Verdict by the sign of the reward gap; margin = 2*sigmoid(gap) - 1 = tanh(gap / 2)."""
    gap = r_chosen - r_rejected
    if not math.isfinite(gap):
        verdict, margin = Verdict.invalid, None
    else:
        verdict = Verdict.chosen if gap > 0 else Verdict.rejected if gap < 0 else Verdict.tie
        margin = math.tanh(gap / 2)
    return Judgment(pair_id=pair_id, judge=judge, model=model, sample=0,
                    order=CandidateOrder.chosen_first, verdict=verdict, margin=margin,
                    raw_text=f"r_chosen={r_chosen:.6g} r_rejected={r_rejected:.6g}", round=round)


GOLD_RM_DIR = "rm/gold"
"""Where `rm-workspace` judges look when their config names no model directory."""


class WorkspaceRMJudge(RewardModelJudge):
    """A reward model trained in the workspace (pipeline.rm), loaded on first use."""

    kind = "rm-workspace"

    def __init__(self, name: str, model: str, *, ws: Any, **kwargs: Any) -> None:
        if ws is None:
            raise ConfigError(f"judge {name!r}: kind rm-workspace needs a workspace")
        super().__init__(name, model or GOLD_RM_DIR, **kwargs)
        self.ws = ws

    @property
    def scorer(self) -> PairScorer:
        if self._scorer is None:
            from pipeline.rm import load_rm

            if not self.ws.exists(self.model):
                raise FileNotFoundError(
                    f"judge {self.name!r}: no reward model at {self.ws.path(self.model)}; train one "
                    "first (synpref rm train) or set the judge's model to its workspace folder")
            self._scorer = load_rm(self.ws, self.model)
        return self._scorer
