"""The source formats synpref reads, and telling them apart from a source's first rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.sources import generic, hh_rlhf, multimodal, pairwise, prompt_chosen_rejected, sharegpt
from pipeline.sources.files import RawRecord, SourceReadError
from pipeline.sources.records import Candidate

SAMPLE_ROWS = 20


@dataclass(frozen=True)
class FormatSpec:
    name: str
    parse: Callable[[dict[str, Any]], Candidate | list[Candidate]]
    matches: Callable[[dict[str, Any]], bool]
    label_source: str
    describe: str


# Most specific first: a PandaLM row also has the keys of a looser format, an image row those of
# its text-only counterpart.
FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(multimodal.VL_REWARDBENCH, multimodal.parse_vl_rewardbench,
                   multimodal.matches_vl_rewardbench, multimodal.VL_REWARDBENCH_LABEL_SOURCE,
                   "query, image|image_path, response list, human_ranking (best vs each worse)"),
        FormatSpec(multimodal.LLAVA, multimodal.parse_llava, multimodal.matches_llava,
                   multimodal.LABEL_SOURCE,
                   "conversations|messages with <image> markers + image|images + chosen + rejected"),
        FormatSpec(multimodal.IMAGE_QUESTION, multimodal.parse_image_question,
                   multimodal.matches_image_question, multimodal.LABEL_SOURCE,
                   "image|images + question|prompt + chosen + rejected (RLAIF-V, MM-RLHF, VLFeedback)"),
        FormatSpec(pairwise.PANDALM, pairwise.parse_pandalm, pairwise.matches_pandalm, pairwise.LABEL_SOURCE,
                   "instruction, input, response1, response2, annotator1..3 (majority vote)"),
        FormatSpec(pairwise.OFFSETBIAS, pairwise.parse_offsetbias, pairwise.matches_offsetbias,
                   pairwise.LABEL_SOURCE, "instruction, response1, response2, label 1|2"),
        FormatSpec(pairwise.LLMBAR, pairwise.parse_llmbar, pairwise.matches_llmbar, pairwise.LABEL_SOURCE,
                   "input, output_1, output_2, label 1|2"),
        FormatSpec(sharegpt.NAME, sharegpt.parse, sharegpt.matches, sharegpt.LABEL_SOURCE,
                   "conversations|messages + chosen + rejected (ShareGPT, LLaMA-Factory, OpenAI)"),
        FormatSpec(hh_rlhf.NAME, hh_rlhf.parse, hh_rlhf.matches, hh_rlhf.LABEL_SOURCE,
                   "chosen/rejected as Human:/Assistant: transcripts"),
        FormatSpec(prompt_chosen_rejected.NAME, prompt_chosen_rejected.parse, prompt_chosen_rejected.matches,
                   prompt_chosen_rejected.LABEL_SOURCE,
                   "prompt (or Alpaca instruction/input/history) + chosen + rejected"),
    )
}
FORMAT_NAMES = [*FORMATS, generic.NAME]


def detect_format(sample: list[RawRecord], where: str) -> str:
    """The one format every sampled row fits; a clear error asking for --format otherwise."""
    rows = [r.record for r in sample if r.record is not None]
    if not rows:
        raise SourceReadError(f"{where}: no readable rows to detect the format from; pass --format")
    found: dict[str, int] = {}
    for rec in rows[:SAMPLE_ROWS]:
        # a row that fits no format is a bad row of the file's format (it is quarantined later)
        name = next((spec.name for spec in FORMATS.values() if spec.matches(rec)), None)
        if name is not None:
            found[name] = found.get(name, 0) + 1
    if not found:
        keys = ", ".join(sorted(rows[0])[:12])
        raise SourceReadError(
            f"{where}: cannot tell the format from rows with fields [{keys}]; pass --format "
            f"({', '.join(FORMAT_NAMES)}) and, for generic, --column-map"
        )
    if len(found) > 1:
        seen = ", ".join(f"{k} ({v} rows)" for k, v in found.items())
        raise SourceReadError(f"{where}: rows look like different formats ({seen}); pass --format")
    return next(iter(found))
