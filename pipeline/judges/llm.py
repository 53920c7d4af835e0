"""What every LLM judge shares: building the Candidate 1/2 requests and reading verdicts back.

Backends (the vLLM offline engine, OpenAI-compatible servers) only turn chat messages into
answers: the sampled text plus the log-probabilities of the labels "1" and "2".
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Judgment
from schemas.pair import PairRecord

from .base import (
    Judge,
    JudgeError,
    LabeledExample,
    candidate_orders,
    label_from_margin,
    margin_from_label_logprobs,
    verdict_from_label,
)
from .prompts import pairwise_prompt, parse_label


@dataclass(frozen=True)
class LabelRequest:
    pair_id: str
    order: CandidateOrder
    prompt: str


@dataclass(frozen=True)
class LabelAnswer:
    """One sample: the generated text and the logprobs of "1" and "2" (None when not returned)."""

    text: str
    lp1: float | None = None
    lp2: float | None = None


class PartialAnswers(Exception):
    """Raised by a backend that failed part-way: answers made so far, by request index."""

    def __init__(self, answers: dict[int, list[LabelAnswer]], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.answers = answers
        self.cause = cause


class PromptJudge(Judge):
    """An LLM judge: one prompt per (pair, order), `samples` answers each."""

    def __init__(self, name: str, model: str, *, temperature: float = 0.0, **kwargs: object) -> None:
        super().__init__(name, model, **kwargs)  # type: ignore[arg-type]
        self.temperature = temperature

    def build_requests(
        self,
        pairs: list[PairRecord],
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        seed: int,
    ) -> list[LabelRequest]:
        """Both orders of a pair sit next to each other, so one batch shares their prefix."""
        out = []
        for pair in pairs:
            shots = examples.get(pair.pair_id, [])[: self.max_examples]
            for order in candidate_orders(pair.pair_id, both=self.both_orders, seed=seed, judge=self.name):
                out.append(LabelRequest(pair.pair_id, order, self.render(pair, order, attributes.get(
                    pair.pair_id), shots)))
        return out

    def render(self, pair: PairRecord, order: CandidateOrder, attributes: PreferenceAttributes | None,
               shots: list[LabeledExample]) -> str:
        return pairwise_prompt(pair, order, attributes=attributes, examples=shots)

    @abstractmethod
    def answer(self, requests: list[LabelRequest], seed: int) -> list[list[LabelAnswer]]:
        """`samples` answers per request, in request order; may raise PartialAnswers."""

    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        requests = self.build_requests(pairs, attributes, examples, seed)
        try:
            answers = self.answer(requests, seed)
        except PartialAnswers as exc:
            done = [self.to_judgments(requests[i], a, round) for i, a in sorted(exc.answers.items())]
            # Only pairs whose every order finished are handed back, so a stored pair is complete.
            per_pair: dict[str, int] = {}
            for r in requests:
                per_pair[r.pair_id] = per_pair.get(r.pair_id, 0) + 1
            finished: dict[str, int] = {}
            for i in exc.answers:
                finished[requests[i].pair_id] = finished.get(requests[i].pair_id, 0) + 1
            complete = {p for p, n in finished.items() if n == per_pair[p]}
            partial = [j for group in done for j in group if j.pair_id in complete]
            raise JudgeError(f"judge {self.name!r} ({self.model}): {exc.cause}", partial) from exc.cause
        return [j for r, a in zip(requests, answers, strict=True) for j in self.to_judgments(r, a, round)]

    def to_judgments(self, request: LabelRequest, answers: list[LabelAnswer], round: int) -> list[Judgment]:
        out = []
        for sample, ans in enumerate(answers):
            margin = margin_from_label_logprobs(ans.lp1, ans.lp2, request.order)
            text_label = parse_label(ans.text)
            if margin is not None and (self.temperature == 0 or text_label is None):
                first = margin if request.order == CandidateOrder.chosen_first else -margin
                label: str | None = label_from_margin(first)
            else:
                label = text_label
            out.append(Judgment(
                pair_id=request.pair_id, judge=self.name, model=self.model, sample=sample,
                order=request.order, verdict=verdict_from_label(label, request.order),
                margin=margin, raw_text=ans.text, round=round,
            ))
        return out
