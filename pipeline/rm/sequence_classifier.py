"""Any Hugging Face backbone as a one-output sequence classifier, trained with TRL's RewardTrainer.

Inputs are built token by token so that training and scoring (vLLM or transformers) see the
same ids: the conversation (through the tokenizer's chat template when it has one) and the final
response. When a pair is longer than `max_length`, the oldest history tokens go first; the final
response is cut only when it alone does not fit, and every cut is counted.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models import cuda_available, resolve_model_path
from pipeline.rm.base import (
    Checkpoint,
    FitResult,
    PairLike,
    ProgressFn,
    RewardModel,
    mean_bt_loss,
    pairwise_accuracy,
)
from pipeline.rm.scoring import TransformersScorer, make_scorer
from schemas.config.rm import RMConfig
from schemas.errors import ConfigError
from schemas.pair import Message, render_conversation


class PairTokenizer:
    """Token ids of (conversation, response), cut from the left of the history to fit."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_template = bool(getattr(tokenizer, "chat_template", None))
        # Chat templates write their own special tokens; plain text gets the tokenizer's (CLS/BOS/...).
        self.wrap = ([], []) if self.use_template else _special_tokens_around(tokenizer)
        self.budget = max_length - len(self.wrap[0]) - len(self.wrap[1])
        if self.budget < 8:
            raise ConfigError(f"rm.max_length {max_length} leaves no room for the response")
        self.cuts: Counter[str] = Counter()

    def _texts(self, conversation: Sequence[Message], response: str) -> tuple[str, str]:
        if self.use_template:
            messages = [{"role": m.role.value, "content": m.content} for m in conversation]
            prefix = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            if full.startswith(prefix):
                return prefix, full[len(prefix) :]
            # A template that renders the final assistant turn unlike its generation prompt
            # (a reasoning block, a marker on the last turn): split where the response starts,
            # so that a cut still takes the oldest history and keeps the response.
            at = _response_start(full, prefix, response)
            return full[:at], full[at:]
        eos = self.tokenizer.eos_token or ""
        return render_conversation(conversation) + "\n\nAssistant: ", response + eos

    def encode(self, conversation: Sequence[Message], response: str) -> list[int]:
        prefix, suffix = self._texts(conversation, response)
        # verbose=False: texts longer than the model are expected here; they are cut just below.
        def ids(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []

        history, answer = ids(prefix), ids(suffix)
        if len(answer) > self.budget:
            self.cuts["response"] += 1
            history, answer = [], answer[: self.budget]
        elif len(history) + len(answer) > self.budget:
            self.cuts["history"] += 1
            history = history[len(history) + len(answer) - self.budget :]
        return self.wrap[0] + history + answer + self.wrap[1]

    def encode_pairs(self, records: Sequence[PairLike]) -> tuple[list[list[int]], list[list[int]]]:
        chosen = [self.encode(r.conversation, r.chosen) for r in records]
        rejected = [self.encode(r.conversation, r.rejected) for r in records]
        return chosen, rejected


def _response_start(full: str, prefix: str, response: str) -> int:
    """Where the final response begins in a rendered conversation: its last occurrence (as given,
    or stripped, as many templates write it), else the end of what the generation-prompt
    rendering shares with the full one."""
    for needle in (response, response.strip()):
        if needle:
            at = full.rfind(needle)
            if at >= 0:
                return at
    shared = 0
    for a, b in zip(prefix, full, strict=False):
        if a != b:
            break
        shared += 1
    return shared


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text (e.g. [CLS] ... [SEP], or BOS)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(wrapped) - len(bare) + 1):
        if wrapped[start : start + len(bare)] == bare:
            return wrapped[:start], wrapped[start + len(bare) :]
    return [], []


def _gold_selection_callback(result: FitResult, gold_ids: tuple[list[list[int]], list[list[int]]] | None,
                             best_dir: Path, cfg: RMConfig) -> Any:
    """A trainer callback that scores gold at each selection point and keeps the best checkpoint."""
    from transformers import TrainerCallback

    class GoldSelection(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def _select(self, state: Any, model: Any) -> None:
            checkpoint = Checkpoint(epoch=float(state.epoch or 0), step=state.global_step,
                                    train_loss=self.losses[-1] if self.losses else float("nan"))
            if gold_ids is not None:
                scores = TransformersScorer(model, batch_size=cfg.score_batch_size).score_pairs(*gold_ids)
                checkpoint.gold_accuracy = pairwise_accuracy(scores)
                checkpoint.gold_loss = mean_bt_loss(scores)
            result.checkpoints.append(checkpoint)
            if checkpoint.better_than(result.best):
                result.best = checkpoint
                model.save_pretrained(best_dir)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            every = cfg.select_every_steps
            if every and state.global_step % every == 0 and state.global_step < state.max_steps:
                self._select(state, model)

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            self._select(state, model)

    return GoldSelection()


def _use_bf16(cfg: RMConfig) -> bool:
    if cfg.bf16 == "auto":
        return cuda_available()
    return cfg.bf16 == "yes" and cuda_available()


FP32_TRAINING_BYTES_PER_PARAMETER = 16
"""fp32 weights (4 bytes), their gradients (4) and AdamW's two moments (8)."""
STATE_SHARE_OF_GPU = 0.8
"""The share of GPU memory weights, gradients and optimizer state may take; activations need the rest."""


def choose_weights_dtype(setting: str, bf16: bool, parameters: int, device_bytes: int) -> str:
    """`float32` or `bfloat16`: the dtype the backbone is loaded in for training.

    Without bf16 (always on the CPU) it is float32. With bf16, `auto` keeps fp32 weights under
    mixed precision when they, their gradients and AdamW's state fit in `device_bytes`, and loads
    bf16 weights otherwise (an 8B backbone needs ~128 GB in fp32 training, ~64 GB in bf16).
    """
    if setting not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"rm.weights_dtype must be auto, float32 or bfloat16, not {setting!r}")
    if not bf16 or setting == "float32":
        return "float32"
    if setting == "bfloat16":
        return "bfloat16"
    fits = parameters * FP32_TRAINING_BYTES_PER_PARAMETER <= STATE_SHARE_OF_GPU * device_bytes
    return "float32" if fits else "bfloat16"


def count_parameters(model_dir: str) -> int:
    """Parameters of the one-output classifier built on `model_dir`, counted without allocating them."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


def training_weights_dtype(cfg: RMConfig, model_dir: str) -> str:
    """`choose_weights_dtype` for this config, backbone and the GPU in use."""
    bf16 = _use_bf16(cfg)
    if not bf16 or cfg.weights_dtype != "auto":
        return choose_weights_dtype(cfg.weights_dtype, bf16, 0, 0)
    import torch

    device_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return choose_weights_dtype("auto", True, count_parameters(model_dir), device_bytes)


def training_args(cfg: RMConfig, output_dir: Path) -> Any:
    """TRL's RewardConfig for `cfg`: built before the backbone loads, so a bad setting (an unknown
    `optim`, say) fails at once."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.epochs,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=_use_bf16(cfg),
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda_available(),
        remove_unused_columns=False,
    )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class SequenceClassifierRM(RewardModel):
    """A backbone with a scalar head; see the module docstring."""

    kind = "sequence-classifier"

    def __init__(self, cfg: RMConfig, model_dir: str | None = None) -> None:
        super().__init__(cfg)
        self.model_dir = model_dir or resolve_model_path(cfg.base_model)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.pairs = PairTokenizer(self.tokenizer, cfg.max_length)
        self._scorer: Any = None
        self._borrowed = False
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.weights_dtype: str | None = None  # what fit() loaded the backbone in

    @property
    def truncation(self) -> dict[str, int]:
        return dict(self.pairs.cuts)

    # -- training ------------------------------------------------------------------------

    def fit(self, train: Sequence[PairLike], gold: Sequence[PairLike] | None = None) -> FitResult:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, PrinterCallback
        from trl import RewardTrainer

        if not train:
            raise ValueError("no training pairs")
        started = time.perf_counter()
        self.pairs.cuts.clear()
        chosen, rejected = self.pairs.encode_pairs(train)
        gold_ids = self.pairs.encode_pairs(gold) if gold else None
        cuts = dict(self.pairs.cuts)
        self._workdir = tempfile.TemporaryDirectory(prefix="synpref-rm-")
        work = Path(self._workdir.name)
        best_dir = work / "best"
        args = training_args(self.cfg, work / "trainer")
        # fp32 weights on the CPU; on a GPU with bf16, bf16 weights when fp32 training would not fit.
        self.weights_dtype = training_weights_dtype(self.cfg, self.model_dir)
        torch.manual_seed(self.cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, num_labels=1, dtype=getattr(torch, self.weights_dtype)
        )
        model.config.pad_token_id = self.tokenizer.pad_token_id
        result = FitResult(train_pairs=len(train), truncation=cuts)
        selection = _gold_selection_callback(result, gold_ids, best_dir, self.cfg)
        dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset,
                                processing_class=self.tokenizer, callbacks=[selection])
        trainer.remove_callback(PrinterCallback)  # losses are kept per checkpoint, not printed
        trainer.train()
        self.tokenizer.save_pretrained(best_dir)
        self.model_dir = str(best_dir)
        self._close_scorer()
        del trainer, model
        result.seconds = time.perf_counter() - started
        return result

    # -- scoring -------------------------------------------------------------------------

    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = make_scorer(self.model_dir, self.cfg)
        return self._scorer

    def use_scorer(self, scorer: Any) -> None:
        """Score through an engine the caller holds (one vLLM engine shared by many models of the
        same weights); the caller stays its owner and closes it."""
        self._close_scorer()
        self._scorer = scorer
        self._borrowed = True

    def score(self, records: Sequence[PairLike], *, progress: ProgressFn | None = None) -> np.ndarray:
        if not records:
            return np.zeros((0, 2), dtype=np.float64)
        chosen, rejected = self.pairs.encode_pairs(records)
        return self.scorer().score_pairs(chosen, rejected, progress=progress)

    def score_counting_cuts(self, records: Sequence[PairLike]) -> tuple[np.ndarray, Counter[str]]:
        """`score(records)` and the inputs its token budget cut (`history` / `response`), the
        keys training reports; `pipeline.rm.scoring.score_counting_cuts` asks the model for them."""
        before = Counter(self.pairs.cuts)
        scores = self.score(records)
        return scores, Counter(self.pairs.cuts) - before

    def _close_scorer(self) -> None:
        if self._scorer is not None and not self._borrowed:
            self._scorer.close()
        self._scorer = None
        self._borrowed = False

    def close(self) -> None:
        self._close_scorer()

    # -- persistence ---------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        source = Path(self.model_dir)
        if source.resolve() != directory.resolve():
            for item in source.iterdir():
                if item.is_file():
                    shutil.copy2(item, directory / item.name)
        (directory / "rm_tokens.json").write_text(json.dumps({"max_length": self.cfg.max_length}))

    @classmethod
    def load(cls, directory: Path, cfg: RMConfig) -> SequenceClassifierRM:
        return cls(cfg, model_dir=str(directory))

    def describe(self) -> dict[str, Any]:
        scorer = self._scorer.backend if self._scorer is not None else None
        return {**super().describe(), "scorer": scorer, "truncation": self.truncation,
                "weights_dtype": self.weights_dtype}
