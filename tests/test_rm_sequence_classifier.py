"""A Hugging Face sequence-classifier RM (the tiny local Qwen2): TRL training, left truncation,
vLLM pooling scores equal to transformers scores, save/load round trip."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.judges.run import load_pairs
from pipeline.rm import gold_accuracy, load_rm, score_pairs
from pipeline.rm.base import Example
from pipeline.rm.sequence_classifier import (
    PairTokenizer,
    SequenceClassifierRM,
    choose_weights_dtype,
    count_parameters,
    training_args,
    training_weights_dtype,
)
from pipeline.rm.training import oriented_examples
from schemas.config.rm import RMConfig
from schemas.pair import Message
from tests.fixtures.rm_engines import HHPool, TrainedTinyRM


@pytest.fixture(scope="module")
def tokenizer(tiny_reward_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_reward_model))


def conversation(*turns: str) -> tuple[Message, ...]:
    roles = ["user", "assistant"]
    return tuple(Message(role=roles[i % 2], content=t) for i, t in enumerate(turns))


def test_short_pairs_are_not_cut(tokenizer) -> None:
    pairs = PairTokenizer(tokenizer, max_length=128)
    ids = pairs.encode(conversation("what is two and two"), "four")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is two and two"}, {"role": "assistant", "content": "four"}],
        tokenize=True, return_dict=True)["input_ids"]
    assert ids == expected
    assert not pairs.cuts


def test_long_history_is_cut_from_the_left_and_the_response_survives(tokenizer) -> None:
    pairs = PairTokenizer(tokenizer, max_length=64)
    history = conversation("first question " * 40, "an old answer " * 40, "the latest question")
    response = "the final answer is better"
    ids = pairs.encode(history, response)
    tail = tokenizer(f"{response}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == 64
    assert ids[-len(tail):] == tail
    assert pairs.cuts == {"history": 1}


# The generation prompt opens a reasoning block that the rendered final turn does not have, so
# the conversation-with-generation-prompt is not a prefix of the full rendering.
MISMATCHED_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\nwhy\n{% endif %}"
)


def test_a_template_without_a_shared_prefix_still_cuts_the_history(tiny_reward_model) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_reward_model))
    tok.chat_template = MISMATCHED_TEMPLATE
    pairs = PairTokenizer(tok, max_length=64)
    history = conversation("first question " * 40, "an old answer " * 40, "the latest question")
    response = "the final answer is better"
    ids = pairs.encode(history, response)
    tail = tok(f"{response}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == 64
    assert ids[-len(tail):] == tail  # the response and its end of turn survive
    assert pairs.cuts == {"history": 1}
    # Short pairs are whole: the rendered conversation, then the response.
    short = pairs.encode(conversation("what is two and two"), "four")
    assert tok.decode(short) == "<|im_start|>user\nwhat is two and two<|im_end|>\n<|im_start|>assistant\n" \
        "four<|im_end|>\n"
    assert pairs.cuts == {"history": 1}


def test_a_response_longer_than_the_limit_is_cut_and_counted(tokenizer) -> None:
    pairs = PairTokenizer(tokenizer, max_length=32)
    ids = pairs.encode(conversation("hi"), "answer " * 100)
    assert len(ids) == 32
    assert pairs.cuts == {"response": 1}


def test_trains_through_trl_and_selects_on_gold(trained_tiny_rm: TrainedTinyRM) -> None:
    result = trained_tiny_rm.result
    assert result.kind == "sequence-classifier" and result.train_pairs == 48 and result.gold_pairs == 24
    assert [c["epoch"] for c in result.checkpoints] == [1.0, 2.0]
    best = max(result.checkpoints, key=lambda c: (c["gold_accuracy"], -c["gold_loss"]))
    assert result.best_epoch == best["epoch"]
    assert all(np.isfinite(c["train_loss"]) for c in result.checkpoints)
    saved = trained_tiny_rm.ws.read_json(f"{trained_tiny_rm.out}/train.json")
    assert saved["truncation"] == result.truncation
    assert (trained_tiny_rm.model_dir / "config.json").exists()
    assert (trained_tiny_rm.model_dir / "tokenizer.json").exists()


def held_out(hh_pool: HHPool, n: int = 24) -> list[Example]:
    return oriented_examples(hh_pool.ws, hh_pool.labels(hh_pool.held_out[:n]), "held-out")[0]


def test_vllm_pooling_scores_equal_transformers_scores(
    hh_pool: HHPool, trained_tiny_rm: TrainedTinyRM, rm_vllm_scorer
) -> None:
    model = load_rm(trained_tiny_rm.ws, trained_tiny_rm.out, scorer="transformers")
    assert isinstance(model, SequenceClassifierRM)
    examples = held_out(hh_pool)
    with_transformers = model.score(examples)
    chosen, rejected = model.pairs.encode_pairs(examples)
    with_vllm = rm_vllm_scorer.score_pairs(chosen, rejected)
    assert with_vllm.shape == (len(examples), 2)
    np.testing.assert_allclose(with_vllm, with_transformers, atol=1e-4, rtol=1e-4)
    assert np.ptp(with_transformers) > 1e-3  # the scores differ across pairs, so equality means something


def test_pool_scoring_through_vllm(hh_pool: HHPool, trained_tiny_rm: TrainedTinyRM, rm_vllm_scorer) -> None:
    model = load_rm(trained_tiny_rm.ws, trained_tiny_rm.out, scorer="transformers")
    reference = model.score(held_out(hh_pool, 12))
    model.use_scorer(rm_vllm_scorer)
    written = score_pairs(hh_pool.ws, model, 7, hh_pool.held_out[:12], "tiny-seqcls")
    assert written == 12
    scores = pl.from_arrow(hh_pool.ws.read("scores")).filter(pl.col("model") == "tiny-seqcls")
    order = {p: i for i, p in enumerate(hh_pool.held_out[:12])}
    scores = scores.sort(pl.col("pair_id").replace_strict(order, return_dtype=pl.Int64))
    np.testing.assert_allclose(scores.select("r_chosen", "r_rejected").to_numpy(), reference, atol=1e-4)


def test_the_saved_model_scores_as_the_trained_one_did(
        hh_pool: HHPool, trained_tiny_rm: TrainedTinyRM) -> None:
    result = trained_tiny_rm.result
    loaded = load_rm(trained_tiny_rm.ws, trained_tiny_rm.out, scorer="transformers")
    # The gold figures of the kept checkpoint were measured on the live torch model during
    # training; the model loaded from the workspace reproduces them.
    report = gold_accuracy(trained_tiny_rm.ws, loaded, hh_pool.labels(hh_pool.gold[:24]))
    assert report["n"] == result.gold_pairs
    assert report["accuracy"] == result.gold_accuracy
    assert report["loss"] == pytest.approx(result.gold_loss, abs=1e-6)
    # And pair by pair, the loaded model scores exactly as the model train_rm returned.
    examples = held_out(hh_pool, 16)
    np.testing.assert_array_equal(loaded.score(examples), result.model.score(examples))
    loaded.close()


def test_weights_dtype_follows_bf16_and_what_fits_on_the_gpu() -> None:
    gib = 1 << 30
    # Without bf16 (the CPU path) the backbone always trains in float32.
    assert choose_weights_dtype("auto", False, 8_000_000_000, 80 * gib) == "float32"
    assert choose_weights_dtype("bfloat16", False, 8_000_000_000, 80 * gib) == "float32"
    # With bf16: fp32 master weights when weights + gradients + AdamW state (16 B/param) fit in
    # 80% of the GPU, bf16 weights otherwise.
    assert choose_weights_dtype("auto", True, 600_000_000, 80 * gib) == "float32"  # 9.6 GB
    assert choose_weights_dtype("auto", True, 8_000_000_000, 80 * gib) == "bfloat16"  # 128 GB
    assert choose_weights_dtype("auto", True, 4_000_000_000, 80 * gib) == "float32"  # 64 GB <= 68.7 GB
    assert choose_weights_dtype("auto", True, 5_000_000_000, 80 * gib) == "bfloat16"
    assert choose_weights_dtype("float32", True, 8_000_000_000, 80 * gib) == "float32"
    assert choose_weights_dtype("bfloat16", True, 1_000, 80 * gib) == "bfloat16"
    with pytest.raises(ValueError, match="weights_dtype"):
        choose_weights_dtype("fp8", True, 1_000, 80 * gib)


def test_parameters_are_counted_without_loading_and_the_cpu_trains_in_fp32(tiny_reward_model) -> None:
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(str(tiny_reward_model), num_labels=1)
    assert count_parameters(str(tiny_reward_model)) == sum(p.numel() for p in loaded.parameters())
    for setting in ("auto", "float32", "bfloat16"):
        cfg = RMConfig(kind="sequence-classifier", weights_dtype=setting, bf16="yes")
        assert training_weights_dtype(cfg, str(tiny_reward_model)) == "float32"
    with pytest.raises(ValueError, match="weights_dtype"):
        RMConfig(weights_dtype="fp8")


def test_the_optimizer_setting_reaches_trl(tmp_path, tiny_reward_model, hh_pool: HHPool) -> None:
    assert training_args(RMConfig(), tmp_path / "a").optim == "adamw_torch"
    assert training_args(RMConfig(optim="adafactor"), tmp_path / "b").optim == "adafactor"
    with pytest.raises(ValueError, match="not-an-optimizer"):
        training_args(RMConfig(optim="not-an-optimizer"), tmp_path / "c")
    # A real (tiny) run through TRL's RewardTrainer with Adafactor.
    cfg = RMConfig(kind="sequence-classifier", base_model=str(tiny_reward_model), optim="adafactor",
                   learning_rate=1e-3, batch_size=4, epochs=1, max_length=128, scorer="transformers")
    model = SequenceClassifierRM(cfg)
    examples = oriented_examples(hh_pool.ws, hh_pool.labels(hh_pool.train[:8]), "train")[0]
    fit = model.fit(examples)
    assert len(fit.checkpoints) == 1 and np.isfinite(fit.checkpoints[0].train_loss)
    assert model.describe()["weights_dtype"] == "float32"
    assert model.score(examples[:2]).shape == (2, 2)
    model.close()


def test_rm_score_command_reports_truncations(hh_pool: HHPool, trained_tiny_rm: TrainedTinyRM,
                                              tmp_path) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    ids = hh_pool.held_out[:40]
    records = load_pairs(hh_pool.ws, ids)
    expected = PairTokenizer(load_rm(trained_tiny_rm.ws, trained_tiny_rm.out).tokenizer, 192)
    expected.encode_pairs(records)
    assert sum(expected.cuts.values()) > 0  # these HH transcripts do not all fit in 192 tokens
    pairs = tmp_path / "ids.txt"
    pairs.write_text("\n".join(ids), encoding="utf-8")
    out = CliRunner().invoke(app, ["rm", "score", trained_tiny_rm.out, "--round", "9", "--pairs", str(pairs),
                                   "--scorer", "transformers", "--model-name", "cli-cuts",
                                   "-w", str(hh_pool.ws.uri)])
    assert out.exit_code == 0, out.output
    assert f"scored {len(ids)} pairs" in out.output
    assert f"truncated inputs: {dict(sorted(expected.cuts.items()))}" in " ".join(out.output.split())
