"""The known-truth image world: answers checked from the pixels, flips injected and recoverable."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from pipeline.images import open_image
from pipeline.quality.meter import injected, noisy_copy
from pipeline.quality.noise import NoiseConfig, inject_noise
from pipeline.quality.world_image import ImageWorldConfig, answer, generate_image_world, read_scene
from pipeline.store import Workspace
from schemas.pair import PairRecord

_VALUES = r"\b(zero|one|two|three|four|five|six|seven|red|green|blue|yellow|left|right)\b"


def stated(response: str) -> str:
    """The answer word a response gives (the world's responses state exactly one)."""
    words = re.findall(_VALUES, response.lower())
    return words[-1]


def test_world_is_deterministic_and_answers_match_the_pixels(tmp_path: Path) -> None:
    cfg = ImageWorldConfig(pairs=120, heldout=30, seed=3)
    world = generate_image_world(cfg)
    assert [r.pair_id for r in world.pool] == [r.pair_id for r in generate_image_world(cfg).pool]
    assert {r.pair_id for r in world.pool}.isdisjoint(r.pair_id for r in world.heldout)
    assert len(world.pool) == 120 and len(world.heldout) == 30
    ws = Workspace(tmp_path / "ws")
    assert world.store(ws) == len(world.images)
    kinds = defaultdict(int)
    for record in world.pool + world.heldout:
        ref = record.conversation[0].images[0]
        scene = read_scene(open_image(ws, ref.sha256))  # what the picture shows, read from pixels
        right = answer(scene, record.meta["question"])
        assert right == record.meta["truth"]
        assert stated(record.chosen) == right and stated(record.rejected) != right
        kinds[record.meta["category"]] += 1
    assert set(kinds) == {"count", "colour", "position"}
    assert sum(r.label_source.value == "human" for r in world.pool) == 12


def test_the_text_alone_cannot_tell_the_better_response() -> None:
    world = generate_image_world(ImageWorldConfig(pairs=400, heldout=0, seed=1))
    answers_by_question: dict[str, set[str]] = defaultdict(set)
    for r in world.pool:
        # the question before its options (the options are shuffled, the right one at random)
        answers_by_question[r.conversation[0].content.split("\n")[0]].add(r.meta["truth"])
    ambiguous = sum(len(a) > 1 for a in answers_by_question.values())
    assert ambiguous >= len(answers_by_question) // 2  # one question text, several right answers
    longer = sum(len(r.chosen) > len(r.rejected) for r in world.pool) / len(world.pool)
    ties = sum(len(r.chosen) == len(r.rejected) for r in world.pool) / len(world.pool)
    assert 0.25 <= longer <= 0.55 and longer + ties >= 0.45  # length says little


def test_injected_flips_are_the_pairs_whose_chosen_is_wrong(tmp_path: Path) -> None:
    world = generate_image_world(ImageWorldConfig(pairs=200, heldout=0, seed=5))
    ws = Workspace(tmp_path / "noisy")
    world.store(ws)
    gold = [r.pair_id for r in world.pool if r.label_source.value == "human"]
    noisy_copy(world.pool_table(), ws, NoiseConfig(flip_share=0.25, seed=5), gold_ids=gold)
    truth = injected(ws)
    flipped = set(truth.filter(truth["flipped"])["pair_id"].to_list())
    assert len(flipped) == round(0.25 * (200 - len(gold)))
    # a checker that reads each picture finds exactly the injected flips
    caught = set()
    for row in ws.read("pool").to_pylist():
        record = PairRecord.from_row(row)
        scene = read_scene(open_image(ws, record.conversation[0].images[0].sha256))
        if stated(record.chosen) != answer(scene, record.meta["question"]):
            caught.add(record.pair_id)
    assert caught == flipped
    # and the noise module's flips keep the image hashes in the ids
    again = inject_noise(world.pool_table(), NoiseConfig(flip_share=0.25, seed=5), protected=gold)
    assert again.flipped_ids == flipped


def test_verifiable_questions_ship_a_key_the_rule_verifiers_check() -> None:
    from pipeline.judges.rules import RuleJudge
    from pipeline.quality.world_image import is_verifiable

    world = generate_image_world(ImageWorldConfig(pairs=200, heldout=0, seed=2, verifiable_share=0.5))
    verifiable = [r for r in world.pool if is_verifiable(r)]
    assert 0.35 <= len(verifiable) / len(world.pool) <= 0.65
    for r in verifiable:
        letter = r.meta["reference_answer"]
        assert r.meta["options"]["ABCD".index(letter)] == r.meta["truth"] == stated(r.chosen)
    judge = RuleJudge("rules")
    flipped = [r.model_copy(update={"chosen": r.rejected, "rejected": r.chosen}) for r in world.pool]
    for pairs, right in ((world.pool, "chosen"), (flipped, "rejected")):
        found = {j.pair_id: j.verdict.value for j in judge.judge(pairs, attributes={}, examples={}, round=1)}
        assert found == {p.pair_id: right for p, r in zip(pairs, world.pool, strict=True) if is_verifiable(r)}
    # a world without verifiable questions gives the rules nothing to decide
    plain = generate_image_world(ImageWorldConfig(pairs=100, heldout=0, seed=2, verifiable_share=0.0))
    assert not any(is_verifiable(r) for r in plain.pool)
    assert judge.judge(plain.pool, attributes={}, examples={}, round=1) == []


def test_split_figures_pool_seeds_with_an_interval_over_pairs() -> None:
    import numpy as np

    from flows.quality_image import detection_interval

    flagged = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    flipped = np.array([1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    one = detection_interval([(flagged, flipped)])
    assert one["f1"]["mean"] == one["precision"]["mean"] == one["recall"]["mean"] == 2 / 3
    assert one["f1"]["low"] <= 2 / 3 <= one["f1"]["high"] and one["clean_discard_rate"]["mean"] == 0.2
    both = detection_interval([(flagged, flipped), (flipped, flipped)])  # a second seed, all caught
    assert both["pooled_pairs"] == 16 and both["pairs"] == 8 and both["flipped"] == 6
    assert both["precision"]["mean"] == 5 / 6 and both["recall"]["mean"] == 5 / 6
    empty = detection_interval([(flagged[:0], flipped[:0])])
    assert empty["pairs"] == 0 and empty["f1"]["mean"] == 0.0
