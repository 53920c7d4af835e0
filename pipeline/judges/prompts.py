"""Judge prompts: the annotation protocol rendered with Jinja2 templates.

The prompt follows the human protocol: the guideline for the pair's task category, objectivity and
controversiality (with sentences about tools removed, since judges have none), up to 8 retrieved
human-labeled pairs with their attributes, then the target pair as Candidate 1 / Candidate 2.
The guideline and examples come first and the conversation before the candidates, so both orders
of a pair share one long prefix that the engine's prefix cache serves.
Pairs with images: the images travel beside the text (see pipeline.judges.llm); the text marks
each where its turn attached it ("[Image 1]"), and the guideline adds the image protocol and the
image task's rules (visual QA, chart/diagram, OCR, image description, visual reasoning). A worked
example about a picture is only worth its label with that picture, so the examples' images are
sent too, numbered before the judged pair's (`example_image_plan` decides which fit).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import jinja2
import xxhash

from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Verdict
from schemas.pair import ImageRef, Message, PairRecord

from .base import LabeledExample, candidates

TEMPLATES = Path(__file__).parent / "templates"

BASE_GUIDELINE = (
    "Read the whole conversation and both candidates before deciding. Prefer the response that "
    "best serves the user's final request: correct, helpful, honest and harmless, in that order "
    "of importance. Length and confident tone are not merits by themselves. Use search engines or "
    "an LLM assistant to check facts when unsure. Ignore the order in which the candidates appear."
)

CATEGORY_GUIDELINES: dict[str, str] = {
    "math": "Check the final answer first: a response with a wrong final answer loses to one with "
            "the right answer, whatever its presentation. Then prefer sound, complete reasoning. "
            "You may verify calculations with a calculator or code interpreter tool.",
    "code": "Prefer code that is correct and runs; check edge cases and the requested language. "
            "Run the code in a sandbox tool if one is available. Then prefer clarity and brevity.",
    "reasoning": "Prefer the response whose conclusion follows from valid steps; penalize logical "
                 "errors even when the final answer happens to be right.",
    "factual-qa": "Prefer the factually accurate response; penalize fabricated facts, names and "
                  "numbers. Search the web to verify claims you cannot check yourself.",
    "writing": "Prefer the response that follows the requested form, tone and constraints, with "
               "fluent, original, well-organized text.",
    "rewriting": "Prefer the response that keeps the original meaning while making exactly the "
                 "requested changes.",
    "summarization": "Prefer the faithful, complete and concise summary; penalize content not in "
                     "the source.",
    "brainstorming": "Prefer varied, relevant, concrete ideas over generic lists.",
    "advice": "Prefer practical, accurate, balanced advice that fits the user's situation and "
              "notes real risks; penalize overconfident advice in medical, legal or financial matters.",
    "roleplay": "Prefer the response that stays in character and follows the user's setup while "
                "remaining appropriate.",
    "chit-chat": "Prefer the natural, friendly, engaged response that answers what was said.",
    "safety": "If the request could cause harm, prefer a response that declines the harmful part "
              "and, where possible, helps with a safe alternative; penalize content that enables "
              "harm. For a benign request, prefer helping over an unnecessary refusal.",
    "other": "Prefer the response that best fulfills the request accurately and helpfully.",
}

IMAGE_GUIDELINE = (
    "The conversation includes images, shown to you in order as Image 1, Image 2, ...; the text "
    "marks where each was attached. Judge the candidates against what the images actually show: "
    "penalize descriptions of objects, text, numbers or relations that are not in the image "
    "(hallucination) more than omissions, and prefer the response grounded in visible evidence."
)

IMAGE_TASK_GUIDELINES: dict[str, str] = {
    "visual-qa": "Check the answer against the image first: the response that answers the question "
                 "correctly from what is visible wins, whatever its length.",
    "chart-diagram": "Read the values, labels, axes and legend of the chart or diagram yourself; prefer "
                     "the response whose numbers and comparisons match them, and penalize misread values.",
    "ocr": "Compare the transcribed or quoted text with the text in the image character by character; "
           "prefer the faithful reading, and penalize invented or missing words.",
    "image-description": "Prefer the description that covers the main content of the image accurately "
                         "and specifically; any object, colour, count or position that is not in the "
                         "image is a serious error.",
    "visual-reasoning": "Check each step that relies on the image (counts, positions, spatial relations) "
                        "against the image; a conclusion built on a misread image loses.",
}
"""Rules for image tasks, picked by the pair's category or, when it is a text category, by
`image_task` from the prompt text."""

EXAMPLE_IMAGES_NOTE = ("The worked examples' images come first in that sequence, so the pair to judge "
                       "refers to the images after them.")

_IMAGE_TASK_CUES = (
    ("ocr", re.compile(r"\b(ocr|transcribe|what does (the|this) (text|sign|label|note) say|read (the|all) "
                       r"(text|words)|written (on|in) the|text in the (image|picture|photo))\b", re.I)),
    ("chart-diagram", re.compile(r"\b(chart|graph|plot|diagram|axis|axes|legend|table|figure|bar|pie|"
                                 r"histogram|flowchart|map)\b", re.I)),
    ("image-description", re.compile(r"\b(describe|description|caption|what is (shown|happening)|"
                                     r"what do you see)\b", re.I)),
    ("visual-reasoning", re.compile(r"\b(how many|count|left of|right of|above|below|behind|next to|"
                                    r"bigger|smaller|closest|farthest)\b", re.I)),
)


def has_images(pair: PairRecord) -> bool:
    return any(m.images for m in pair.conversation)


def image_task(pair: PairRecord) -> str | None:
    """The image task a pair is (None without images): from the wording of its user turns."""
    if not has_images(pair):
        return None
    text = "\n".join(m.content for m in pair.conversation if m.role.value == "user")
    return next((task for task, cue in _IMAGE_TASK_CUES if cue.search(text)), "visual-qa")


def image_count(pair: PairRecord) -> int:
    return sum(len(m.images) for m in pair.conversation)


def conversation_text(conversation: tuple[Message, ...] | list[Message], *, max_chars: int | None = None,
                      marker: str = "[Image {k}]", first: int = 1) -> str:
    """"User: ...\n\nAssistant: ..." with "[Image k]" where a turn attached its k-th image overall
    (numbered from `first`)."""
    parts, k = [], first
    for m in conversation:
        marks = []
        for _ in m.images:
            marks.append(marker.format(k=k))
            k += 1
        content = "\n".join([*marks, m.content]) if marks else m.content
        parts.append(f"{m.role.value.capitalize()}: {content}")
    return clip("\n\n".join(parts), max_chars)


OBJECTIVITY_GUIDELINES = {
    "objective": "This prompt has a verifiable answer: correctness decides before anything else.",
    "subjective": "This prompt has no single correct answer: judge helpfulness, fit to the "
                  "request and quality of writing.",
}

CONTROVERSIALITY_GUIDELINES = {
    "low": "",
    "medium": "Reasonable people may differ here: prefer balanced responses that acknowledge "
              "other views.",
    "high": "This topic is contested or sensitive: prefer neutral, careful, harmless responses; "
            "penalize one-sided or inflammatory content.",
}

_TOOL_USE = re.compile(
    r"\b(search(es|ing)? (engine|the web|online)|search the web|web search|look (it|this|them) up|"
    r"google|browse|browser|calculator|code interpreter|sandbox|tool|LLM assistant|"
    r"chatbot|ask an? (AI|assistant))\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def strip_tool_use(text: str) -> str:
    """Drop every sentence that tells a human to use a tool: judges have none."""
    kept = [s for s in _SENTENCE.split(text.strip()) if s and not _TOOL_USE.search(s)]
    return " ".join(kept)


def guideline_for(attributes: PreferenceAttributes | None, image_task: str | None = None) -> str:
    """The protocol text for a pair's category, objectivity and controversiality (tools removed).

    `image_task` (pairs with images) adds the image protocol and that task's rules; an image
    category in the attributes takes precedence over it.
    """
    parts = [BASE_GUIDELINE]
    category = attributes.task_category if attributes is not None else None
    if image_task is not None:
        parts.append(IMAGE_GUIDELINE)
        parts.append(IMAGE_TASK_GUIDELINES.get(category or "", IMAGE_TASK_GUIDELINES.get(image_task, "")))
    if attributes is not None:
        if category not in IMAGE_TASK_GUIDELINES:
            parts.append(CATEGORY_GUIDELINES.get(attributes.task_category, CATEGORY_GUIDELINES["other"]))
        parts.append(OBJECTIVITY_GUIDELINES[attributes.objectivity.value])
        parts.append(CONTROVERSIALITY_GUIDELINES[attributes.controversiality.value])
        parts.append(attributes.guideline)
    return strip_tool_use(" ".join(p for p in parts if p))


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,  # plain-text prompts, never HTML
    )


def clip(text: str, max_chars: int | None) -> str:
    """Keep the head and tail of an over-long text, so both the start and the conclusion survive."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n[...]\n{text[-tail:]}"


def usable_examples(examples: list[LabeledExample] | None) -> list[LabeledExample]:
    """The examples a prompt shows: human-labeled chosen / rejected ones, at most 8."""
    return [e for e in (examples or []) if e.verdict in (Verdict.chosen, Verdict.rejected)][:8]


def example_image_plan(pair: PairRecord, examples: list[LabeledExample] | None, max_images: int,
                       available: Callable[[ImageRef], bool] | None = None) -> list[bool]:
    """Which usable examples are shown with their images (aligned with `usable_examples`).

    Only a pair that is itself judged with images gets example images (a text judge never sees
    one). The pair's own images come first in the budget of `max_images`; an example is shown with
    all its images or none, nearest first, and one whose image `available` rejects is shown as text.
    """
    usable = usable_examples(examples)
    own = image_count(pair)
    if own == 0:
        return [False] * len(usable)
    budget = max_images - min(own, max_images)
    plan = []
    for ex in usable:
        refs = [i for m in ex.pair.conversation for i in m.images]
        fits = 0 < len(refs) <= budget and (available is None or all(available(r) for r in refs))
        budget -= len(refs) if fits else 0
        plan.append(fits)
    return plan


def _example_view(ex: LabeledExample, max_chars: int | None, first_image: int | None = None
                  ) -> dict[str, object]:
    # Examples show the better response as Candidate 1 or 2 by a hash of the pair, so the judge
    # sees both labels as answers and learns no position habit from them.
    order = (CandidateOrder.chosen_first if xxhash.xxh64_intdigest(ex.pair.pair_id.encode()) & 1 == 0
             else CandidateOrder.rejected_first)
    c1, c2 = candidates(ex.pair, order)
    chosen_better = ex.verdict == Verdict.chosen
    better = "1" if chosen_better == (order == CandidateOrder.chosen_first) else "2"
    return {
        "attributes": ex.attributes,
        # An example sent without its images says so where each was attached.
        "conversation": conversation_text(ex.pair.conversation, max_chars=max_chars, first=first_image)
        if first_image is not None else conversation_text(ex.pair.conversation, max_chars=max_chars,
                                                           marker="[an image, not shown]"),
        "candidate_1": clip(c1, max_chars),
        "candidate_2": clip(c2, max_chars),
        "better": better,
    }


def pairwise_prompt(
    pair: PairRecord,
    order: CandidateOrder,
    *,
    attributes: PreferenceAttributes | None = None,
    examples: list[LabeledExample] | None = None,
    max_chars: int | None = 6000,
    example_chars: int | None = 1200,
    example_images: list[bool] | None = None,
) -> str:
    """The user message asking a judge for "1" or "2".

    `example_images` (from `example_image_plan`) marks the examples sent with their images; those
    images are numbered first, in example order, then the pair's own.
    """
    usable = usable_examples(examples)
    shown = list(example_images or [])[: len(usable)]
    shown += [False] * (len(usable) - len(shown))
    views, k = [], 1
    for ex, with_images in zip(usable, shown, strict=True):
        views.append(_example_view(ex, example_chars, k if with_images else None))
        k += image_count(ex.pair) if with_images else 0
    guideline = guideline_for(attributes, image_task(pair))
    if k > 1:
        guideline = f"{guideline} {EXAMPLE_IMAGES_NOTE}"
    c1, c2 = candidates(pair, order)
    return environment().get_template("pairwise.j2").render(
        guideline=guideline,
        examples=views,
        attributes=attributes,
        conversation=conversation_text(pair.conversation, max_chars=max_chars, first=k),
        candidate_1=clip(c1, max_chars),
        candidate_2=clip(c2, max_chars),
    ).strip()


def attributes_prompt(pair: PairRecord, categories: tuple[str, ...], max_chars: int | None = 3000) -> str:
    return environment().get_template("attributes.j2").render(
        categories=categories,
        image_tasks=tuple(IMAGE_TASK_GUIDELINES) if has_images(pair) else (),
        conversation=conversation_text(pair.conversation, max_chars=max_chars),
        response_a=clip(pair.chosen, max_chars),
        response_b=clip(pair.rejected, max_chars),
    ).strip()


def pointwise_prompt(pair: PairRecord, response: str, reference: str | None = None,
                     max_chars: int | None = 4000) -> str:
    return environment().get_template("pointwise.j2").render(
        reference=reference,
        conversation=conversation_text(pair.conversation, max_chars=max_chars),
        response=clip(response, max_chars),
    ).strip()


def parse_label(text: str) -> str | None:
    """Text fallback when no label logprobs came back: the first standalone 1 or 2, or a phrase."""
    stripped = text.strip()
    if stripped[:1] in ("1", "2"):
        return stripped[:1]
    match = re.search(r"candidate\s*([12])\b", stripped, re.IGNORECASE) or re.search(
        r"(?<![\d.])([12])(?![\d.])", stripped
    )
    return match.group(1) if match else None
