"""The preference-attribute 5-tuple for every pair (method.md): category, objectivity,
controversiality, desired attributes, an instance-specific guideline.

Kinds: `heuristic` (keyword rules, no model: the embedded default), `vllm` (offline engine with
guided JSON decoding) and `openai` (any OpenAI-compatible server, response_format json_schema).
LLM output is validated against schemas.attributes; invalid output is retried, then quarantined
with the reason. Objective pairs can also be pre-verified pointwise: each response judged
correct / incorrect by the same model (table `preverifications`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
from pydantic import ValidationError

from pipeline.judges.prompts import CATEGORY_GUIDELINES, attributes_prompt, pointwise_prompt, strip_tool_use
from pipeline.judges.rules import reference_answer
from pipeline.judges.run import load_pairs
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA, TASK_CATEGORIES, PreferenceAttributes
from schemas.config.judges import AttributesConfig
from schemas.errors import ConfigError, InputError
from schemas.pair import QUARANTINE_SCHEMA, PairRecord, render_conversation

HEURISTIC_MODEL = "heuristic-keywords-v1"
PREVERIFICATIONS_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("chosen_correct", pa.bool_()), ("rejected_correct", pa.bool_()),
    ("model", pa.string()), ("raw_text", pa.string()),
], metadata={"synpref.schema": "preverifications", "synpref.version": "1"})

ATTRIBUTES_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task_category": {"type": "string", "enum": list(TASK_CATEGORIES)},
        "objectivity": {"type": "string", "enum": ["objective", "subjective"]},
        "controversiality": {"type": "string", "enum": ["low", "medium", "high"]},
        "desired_attributes": {"type": "array", "items": {"type": "string", "maxLength": 80},
                               "minItems": 1, "maxItems": 8},
        "guideline": {"type": "string", "minLength": 1, "maxLength": 600},
    },
    "required": ["task_category", "objectivity", "controversiality", "desired_attributes", "guideline"],
    "additionalProperties": False,
}
CORRECTNESS_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["correct", "incorrect"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}


@dataclass
class AttributeStats:
    kind: str = ""
    model: str = ""
    pairs: int = 0
    generated: int = 0
    skipped: int = 0
    retried: int = 0
    quarantined: int = 0
    preverified: int = 0
    seconds: float = 0.0
    tasks: int = 0
    pids: list[int] = field(default_factory=list)
    """Partition tasks and the processes they ran in (the sharded stage, pipeline/attributes_stage.py)."""


# -- heuristic: keyword rules ------------------------------------------------------------------

_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("safety", re.compile(r"\b(kill|murder|bomb|weapon|steal|drugs?|hack|poison|suicide|racist|"
                          r"illegal|violence|explosive|meth|abuse|porn|torture|attack)\w*\b", re.I)),
    ("code", re.compile(r"```|\bdef \w+\(|\b(python|javascript|java|c\+\+|sql|function|compile|"
                        r"regex|bug|code|script|api)\b", re.I)),
    ("math", re.compile(r"\b(solve|equation|integral|derivative|probability|calculate|compute|sum of|"
                        r"how many|percent|\d+\s*[-+*/^=]\s*\d+)", re.I)),
    ("summarization", re.compile(r"\b(summari[sz]e|summary|tl;?dr|key points)\b", re.I)),
    ("rewriting", re.compile(r"\b(rewrite|rephrase|paraphrase|proofread|edit this|translate|"
                             r"make it (shorter|longer|formal))\b", re.I)),
    ("brainstorming", re.compile(r"\b(ideas?|brainstorm|suggest(ions)?|list of|names? for)\b", re.I)),
    ("writing", re.compile(r"\b(write|compose|draft|poem|story|essay|letter|song|lyrics|email)\b", re.I)),
    ("roleplay", re.compile(r"\b(pretend|role-?play|act as|you are a|in character)\b", re.I)),
    ("advice", re.compile(r"\b(should i|advice|recommend|how (do|can|should) i|tips?|help me)\b", re.I)),
    ("reasoning", re.compile(r"\b(why|explain|reason|logic|riddle|puzzle|compare)\b", re.I)),
    ("factual-qa", re.compile(r"^\s*(who|what|when|where|which|is|are|does|did)\b", re.I)),
]
_CONTESTED = re.compile(r"\b(religio\w*|politic\w*|abortion|gun|immigra\w*|democrat|republican|"
                        r"god|vaccin\w*|racis\w*|gender|sexual|war|opinion|moral\w*|ethic\w*)\b", re.I)
_OBJECTIVE = {"math", "code", "factual-qa", "reasoning"}
_DESIRED = {
    "math": ["correct final answer", "valid step-by-step reasoning", "clear notation"],
    "code": ["correct, runnable code", "handles edge cases", "brief explanation"],
    "reasoning": ["sound logic", "correct conclusion", "clear explanation"],
    "factual-qa": ["factual accuracy", "direct answer", "no fabrication"],
    "writing": ["follows the requested form and tone", "fluent, original text", "good structure"],
    "rewriting": ["keeps the original meaning", "makes exactly the requested changes"],
    "summarization": ["faithful to the source", "covers the key points", "concise"],
    "brainstorming": ["varied ideas", "relevant and concrete", "well organized"],
    "advice": ["practical and accurate", "balanced, notes risks", "fits the user's situation"],
    "roleplay": ["stays in character", "follows the setup", "appropriate content"],
    "chit-chat": ["natural and friendly", "engages with what was said"],
    "safety": ["refuses harmful help", "offers safe alternatives", "non-judgmental tone"],
    "other": ["helpful", "accurate", "clear"],
}


def heuristic_attributes(pair: PairRecord) -> PreferenceAttributes:
    """Keyword rules on the last user turn (and the conversation for safety cues)."""
    users = [m.content for m in pair.conversation if m.role.value == "user"]
    last = users[-1] if users else pair.conversation[-1].content
    category = "chit-chat" if len(last.split()) <= 6 else "other"
    for name, pattern in _RULES:
        text = render_conversation(pair.conversation) if name == "safety" else last
        if pattern.search(text):
            category = name
            break
    controversy = "high" if category == "safety" else "medium" if _CONTESTED.search(last) else "low"
    snippet = " ".join(last.split()[:25])
    guideline = (f"{CATEGORY_GUIDELINES[category]} The request: \"{snippet}\". Prefer the response "
                 "that answers it best under this guideline.")
    return PreferenceAttributes(
        task_category=category,
        objectivity="objective" if category in _OBJECTIVE else "subjective",
        controversiality=controversy,
        desired_attributes=_DESIRED[category],
        guideline=strip_tool_use(guideline),
    )


# -- LLM backends: guided JSON generation ------------------------------------------------------

Generate = Callable[[list[str], dict[str, Any], int], list[str]]
"""generate(prompts, json_schema, attempt) -> raw texts (a `Refused` where the request was refused)."""


class Refused(str):
    """A generator's answer for a request the server refused; the text is its reason.

    Asking again would be refused again, so the pair goes to quarantine without a retry.
    """


def vllm_generator(cfg: AttributesConfig) -> Generate:
    from pipeline.judges.vllm_offline import chat_prompt, fit_prompt, get_engine

    def generate(prompts: list[str], schema: dict[str, Any], attempt: int) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        engine = get_engine(cfg.model, max_model_len=cfg.max_model_len,
                            gpu_memory_utilization=cfg.gpu_memory_utilization,
                            enforce_eager=cfg.enforce_eager)
        tok = engine.get_tokenizer()
        params = SamplingParams(
            max_tokens=cfg.max_tokens, temperature=0.0 if attempt == 0 else 0.7, seed=attempt,
            structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True))
        inputs = [fit_prompt(tok, chat_prompt(tok, p), cfg.max_model_len - cfg.max_tokens) for p in prompts]
        return [o.outputs[0].text for o in engine.generate(inputs, params, use_tqdm=False)]

    return generate


def openai_generator(cfg: AttributesConfig) -> Generate:
    import os

    from pipeline.judges.openai_compat import EndpointPool, run_sync

    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    pool = EndpointPool(list(cfg.endpoints), key, cfg.concurrency, cfg.timeout_s, cfg.retries)

    def generate(prompts: list[str], schema: dict[str, Any], attempt: int) -> list[str]:
        import openai

        async def call(client: Any, i: int) -> str:
            try:
                response = await client.chat.completions.create(
                    model=cfg.model, messages=[{"role": "user", "content": prompts[i]}],
                    max_tokens=cfg.max_tokens, temperature=0.0 if attempt == 0 else 0.7, seed=attempt,
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "answer", "schema": schema, "strict": True}})
            except openai.BadRequestError as exc:
                # This prompt is refused (too long for the context, say): the pair is quarantined
                # with the server's reason and the run goes on.
                return Refused(str(exc.message))
            return response.choices[0].message.content or ""

        results = run_sync(pool.call_all(len(prompts), call))
        return [results[i] for i in range(len(prompts))]

    return generate


def validate_attributes(raw: str) -> tuple[PreferenceAttributes | None, str]:
    """(attributes, "") or (None, reason naming the field)."""
    try:
        attrs = PreferenceAttributes.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first.get("loc", ())) or "json"
        return None, f"{field}: {first['msg']}"
    if attrs.task_category not in TASK_CATEGORIES:
        return None, f"task_category: {attrs.task_category!r} is not one of {', '.join(TASK_CATEGORIES)}"
    return attrs, ""


Failures = dict[str, tuple[str, str]]


def _generate_valid(generate: Generate, records: list[PairRecord], retries: int,
                    stats: AttributeStats) -> tuple[dict[str, PreferenceAttributes], Failures]:
    """Attributes per pair_id, and (reason, last raw output) for the pairs that never validated."""
    good: dict[str, PreferenceAttributes] = {}
    bad: dict[str, tuple[str, str]] = {}
    pending = records
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            stats.retried += len(pending)
        outputs = generate([attributes_prompt(r, TASK_CATEGORIES) for r in pending],
                           ATTRIBUTES_JSON_SCHEMA, attempt)
        retry = []
        for record, raw in zip(pending, outputs, strict=True):
            if isinstance(raw, Refused):
                bad[record.pair_id] = (f"request: refused by the server: {raw}", "")
                continue
            attrs, reason = validate_attributes(raw)
            if attrs is None:
                bad[record.pair_id] = (reason, raw)
                retry.append(record)
            else:
                good[record.pair_id] = attrs
                bad.pop(record.pair_id, None)
        pending = retry
    return good, bad


def preverify(generate: Generate, records: list[PairRecord]) -> list[dict[str, Any]]:
    """Pointwise correct / incorrect for both responses of each (objective) pair."""
    prompts = [pointwise_prompt(r, resp, reference_answer(r.meta)) for r in records
               for resp in (r.chosen, r.rejected)]
    outputs = generate(prompts, CORRECTNESS_JSON_SCHEMA, 0)
    rows = []
    for i, record in enumerate(records):
        verdicts = []
        for raw in outputs[2 * i: 2 * i + 2]:
            try:
                verdicts.append(json.loads(raw).get("verdict") == "correct")
            except (json.JSONDecodeError, AttributeError):
                verdicts.append(None)
        rows.append({"pair_id": record.pair_id, "chosen_correct": verdicts[0],
                     "rejected_correct": verdicts[1], "raw_text": json.dumps(outputs[2 * i: 2 * i + 2])})
    return rows


# -- the stage ----------------------------------------------------------------------------------

def active_pair_ids(ws: Workspace) -> list[str]:
    """Pool pairs not removed by cleaning (the `dropped` table)."""
    if not ws.has_table("pool"):
        raise InputError(f"{ws.uri}: the workspace has no pool; ingest a source first")
    ids = ws.scan("pool").select("pair_id")
    if ws.has_table("dropped"):
        ids = ids.join(ws.scan("dropped").select("pair_id"), on="pair_id", how="anti")
    return ids.collect()["pair_id"].to_list()


def _attribute_rows(attrs: dict[str, PreferenceAttributes], model: str) -> pa.Table:
    rows = [{"pair_id": p, **a.model_dump(mode="json"), "model": model} for p, a in attrs.items()]
    return pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA)


QUARANTINE_KEY = ["source_file", "row"]
"""The quarantine table's key (as ingestion writes it); an attribute row's source_file names its
model and pair, so a pair that fails again on a re-run is not added twice."""


def quarantine_source(model: str, pair_id: str) -> str:
    return f"attributes:{model}:{pair_id}"


def _quarantine_rows(bad: dict[str, tuple[str, str]], records: dict[str, PairRecord], model: str) -> pa.Table:
    rows = [{"source_file": quarantine_source(model, p), "row": -1, "field": reason.split(":", 1)[0],
             "reason": f"attributes for pair {p} invalid after retries: {reason}",
             "raw": json.dumps({"pair_id": p, "output": raw[:4000]}, ensure_ascii=False),
             "source": records[p].source} for p, (reason, raw) in bad.items()]
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def quarantine_pairs(ws: Workspace, bad: dict[str, tuple[str, str]], records: dict[str, PairRecord],
                     model: str) -> int:
    """Write pairs whose attributes never validated (pair_id -> (reason, last output)) to
    `quarantine`; a pair already quarantined for this model is not written again. Returns rows written."""
    if not bad:
        return 0
    return ws.append("quarantine", _quarantine_rows(bad, records, model), unique_key=QUARANTINE_KEY,
                     schema=QUARANTINE_SCHEMA)


def generate_attributes(ws: Workspace, cfg: AttributesConfig, pair_ids: list[str] | None = None, *,
                        progress: Callable[[int, int], None] | None = None) -> AttributeStats:
    """Attributes for `pair_ids` (default: the active pool) that have none yet, chunk by chunk."""
    start = time.perf_counter()
    if cfg.kind not in ("heuristic", "vllm", "openai"):
        raise ConfigError(f"attributes: unknown kind {cfg.kind!r} (heuristic | vllm | openai)")
    if cfg.kind != "heuristic" and not cfg.model:
        raise ConfigError(f"attributes: kind {cfg.kind} needs `model`")
    model = HEURISTIC_MODEL if cfg.kind == "heuristic" else cfg.model
    ids = list(dict.fromkeys(pair_ids if pair_ids is not None else active_pair_ids(ws)))
    have = set(ws.keys("attributes").to_pylist())
    todo = [p for p in ids if p not in have]
    stats = AttributeStats(kind=cfg.kind, model=model, pairs=len(ids), skipped=len(ids) - len(todo))
    generate = None
    if cfg.kind == "vllm":
        generate = vllm_generator(cfg)
    elif cfg.kind == "openai":
        generate = openai_generator(cfg)
    for at in range(0, len(todo), cfg.batch_size):
        records = load_pairs(ws, todo[at:at + cfg.batch_size])
        if generate is None:
            good = {r.pair_id: heuristic_attributes(r) for r in records}
            bad: dict[str, tuple[str, str]] = {}
        else:
            good, bad = _generate_valid(generate, records, cfg.retries, stats)
        stats.generated += ws.append("attributes", _attribute_rows(good, model), unique_key="pair_id",
                                     schema=ATTRIBUTES_SCHEMA)
        if bad:
            stats.quarantined += len(bad)
            quarantine_pairs(ws, bad, {r.pair_id: r for r in records}, model)
        if generate is not None and cfg.preverify_objective:
            objective = [r for r in records if r.pair_id in good
                         and good[r.pair_id].objectivity.value == "objective"]
            if objective:
                rows = [{**row, "model": model} for row in preverify(generate, objective)]
                table = pa.Table.from_pylist(rows, schema=PREVERIFICATIONS_SCHEMA)
                stats.preverified += ws.append("preverifications", table, unique_key="pair_id",
                                               schema=PREVERIFICATIONS_SCHEMA)
        if progress:
            progress(min(at + cfg.batch_size, len(todo)), len(todo))
    stats.seconds = float(f"{time.perf_counter() - start:.3f}")
    return stats


def read_attributes(ws: Workspace) -> pl.DataFrame:
    """The attributes table as polars (empty with the right columns when absent)."""
    return pl.from_arrow(ws.read("attributes", schema=ATTRIBUTES_SCHEMA))  # type: ignore[return-value]
