"""A known-truth synthetic preference world, for measuring curation where real benchmarks can't.

Every pair is generated so that its stored `chosen` response is truly better under one hidden
rule, which a reward model on sentence-encoder features can learn from the text:

- `topic`: the better response addresses the topic asked about; the worse drifts to another
  (often saying so, as drifting models do: "Actually, let me talk about ... instead").
- `format`: the user asks for a list / one sentence / JSON; the better response follows it, the
  worse ignores it (often saying so).
- `safety`: the user asks for something harmful; the better response refuses, the worse complies.
- `over_refusal`: a harmless question; the better response helps, the worse refuses.

Response lengths are drawn independently of which response is better (except where a rule
fixes them: a one-sentence answer is short), so a "longer is better" bias is pure noise here.
`cue_share` sets how many topic / format violations
announce themselves; the silent rest can only be judged against the prompt (lower is harder).
The generator is deterministic per seed; the held-out set comes from the same world and shares
no pair with the pool. Noise (random flips, length bias) is applied by `noise.inject_noise`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.quality import world_text as text
from schemas.errors import ConfigError
from schemas.pair import POOL_SCHEMA, LabelSource, Message, PairRecord, Role

RULES = ("topic", "format", "safety", "over_refusal")


class WorldConfig(BaseModel):
    """How big the world is, how its rules mix, and the noise its default experiment injects."""

    model_config = ConfigDict(extra="forbid")

    pairs: int = Field(default=2000, ge=1, description="Pairs in the (to be noised) pool.")
    heldout: int = Field(default=600, ge=0, description="Clean held-out pairs for RM accuracy.")
    seed: int = 0
    gold_share: float = Field(default=0.1, ge=0.0, le=1.0,
                              description="Share of the pool labeled by humans (the gold seed).")
    rule_mix: dict[str, float] = Field(
        default_factory=lambda: {"topic": 0.3, "format": 0.25, "safety": 0.25, "over_refusal": 0.2})
    flip_share: float = Field(default=0.25, ge=0.0, le=1.0)
    length_bias: float = Field(default=0.10, ge=0.0, le=1.0)
    multi_turn_share: float = Field(default=0.2, ge=0.0, le=1.0)
    cue_share: float = Field(default=0.85, ge=0.0, le=1.0,
                             description="Share of topic / format violations whose worse response "
                             "says it drifts or ignores the format; the rest are silent and need "
                             "the prompt to be judged. Lower is harder.")
    source: str = "synthetic-world"


@dataclass(frozen=True)
class World:
    """Clean pairs (stored chosen = truly better): the pool and the disjoint held-out set."""

    pool: list[PairRecord]
    heldout: list[PairRecord]

    def pool_table(self) -> pa.Table:
        return records_table(self.pool)

    def heldout_table(self) -> pa.Table:
        return records_table(self.heldout)


def records_table(records: list[PairRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=POOL_SCHEMA)


def generate_world(cfg: WorldConfig) -> World:
    """The pool and held-out pairs of the world with this seed (same seed, same world)."""
    unknown = set(cfg.rule_mix) - set(RULES)
    if unknown:
        raise ConfigError(f"rule_mix: unknown rules {sorted(unknown)}; known: {list(RULES)}")
    weights = [max(0.0, cfg.rule_mix.get(r, 0.0)) for r in RULES]
    if sum(weights) <= 0:
        raise ConfigError("rule_mix: at least one rule needs a positive weight")
    rng = random.Random(cfg.seed)
    total = cfg.pairs + cfg.heldout
    seen: set[str] = set()
    records: list[PairRecord] = []
    attempts = 0
    while len(records) < total:
        attempts += 1
        if attempts > total * 50:
            raise ConfigError(f"the world cannot produce {total} distinct pairs; ask for fewer")
        rule = rng.choices(RULES, weights=weights)[0]
        conversation, better, worse = _PAIR_MAKERS[rule](rng, cfg.cue_share)
        if rng.random() < cfg.multi_turn_share:
            conversation = _with_opening_exchange(rng, conversation)
        record = PairRecord(
            conversation=tuple(conversation), chosen=better, rejected=worse, source=cfg.source,
            source_id=f"world-{cfg.seed}-{len(records)}", license="CC0-1.0",
            label_source=LabelSource.ai, meta={"category": rule})
        if record.pair_id in seen:
            continue
        seen.add(record.pair_id)
        records.append(record)
    pool, heldout = records[: cfg.pairs], records[cfg.pairs :]
    n_gold = round(cfg.gold_share * len(pool))
    gold_at = set(rng.sample(range(len(pool)), n_gold))
    pool = [r.model_copy(update={"label_source": LabelSource.human}) if i in gold_at else r
            for i, r in enumerate(pool)]
    return World(pool=pool, heldout=heldout)


# -- rules ----------------------------------------------------------------------------------

Pair = tuple[list[Message], str, str]


def _topic_pair(rng: random.Random, cue_share: float) -> Pair:
    topic, other = rng.sample(sorted(text.TOPICS), 2)
    fmt = rng.choice(("paragraph", "list"))
    prompt = _question(rng, topic, fmt)
    cue = rng.choice(text.DRIFT_OPENINGS).format(other=other) if rng.random() < cue_share else ""
    return ([_user(prompt)], _answer(rng, topic, fmt), _answer(rng, other, fmt, opening=cue))


def _format_pair(rng: random.Random, cue_share: float) -> Pair:
    topic = rng.choice(sorted(text.TOPICS))
    asked = rng.choice([f for f in text.FORMATS if f != "paragraph"])
    other = rng.choice([f for f in text.FORMATS if f != asked and f != "json"])
    cue = rng.choice(text.FORMAT_IGNORED) if rng.random() < cue_share else ""
    return ([_user(_question(rng, topic, asked))], _answer(rng, topic, asked),
            _answer(rng, topic, other, opening=cue))


def _safety_pair(rng: random.Random, cue_share: float) -> Pair:
    act, alternative = rng.choice(text.HARMFUL_REQUESTS)
    prompt = rng.choice(text.HARMFUL_PHRASINGS).format(act=act)
    refusal = [rng.choice(text.REFUSALS), alternative]
    if rng.random() < 0.5:
        refusal.append("I'm happy to help with a safer version of what you need.")
    steps = [text.COMPLIANCE_STEPS[0].format(act=act),
             *rng.sample(text.COMPLIANCE_STEPS[1:], rng.randint(1, 4))]
    return ([_user(prompt)], " ".join(refusal), " ".join(steps))


def _over_refusal_pair(rng: random.Random, cue_share: float) -> Pair:
    topic = rng.choice(sorted(text.TOPICS))
    fmt = rng.choice(text.FORMATS)
    refusal = rng.choice(text.OVER_REFUSALS).format(topic=topic)
    return ([_user(_question(rng, topic, fmt))], _answer(rng, topic, fmt), refusal)


_PAIR_MAKERS = {"topic": _topic_pair, "format": _format_pair, "safety": _safety_pair,
                "over_refusal": _over_refusal_pair}


# -- text -----------------------------------------------------------------------------------

def _user(content: str) -> Message:
    return Message(role=Role.user, content=content)


def _question(rng: random.Random, topic: str, fmt: str) -> str:
    question = rng.choice(text.QUESTIONS).format(topic=topic, kw=rng.choice(text.TOPICS[topic]))
    if fmt in text.FORMAT_REQUESTS:
        question = f"{question} {rng.choice(text.FORMAT_REQUESTS[fmt])}"
    return question


def _answer(rng: random.Random, topic: str, fmt: str, opening: str = "") -> str:
    """An answer about `topic` in format `fmt`; 2-5 sentences unless one is asked for."""
    n = 1 if fmt == "sentence" else rng.randint(2, 5)
    keywords = text.TOPICS[topic]
    sentences = [opening] if opening else []
    for template in rng.sample(text.SENTENCES, n):
        a, b = rng.sample(keywords, 2)
        sentences.append(template.format(a=a, b=b, A=a[0].upper() + a[1:]))
    if fmt == "list":
        return "\n".join(f"- {s}" for s in sentences)
    if fmt == "json":
        return json.dumps({"tips": sentences})
    return " ".join(sentences)


def _with_opening_exchange(rng: random.Random, conversation: list[Message]) -> list[Message]:
    opening = rng.choice(("Hi there!", "Hello, can I ask you something?", "Good morning."))
    reply = rng.choice(("Hello! What can I do for you?", "Of course, go ahead.",
                        "Good morning! How can I help?"))
    return [_user(opening), Message(role=Role.assistant, content=reply), *conversation]
