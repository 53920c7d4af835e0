"""The whole loop with every real component at once: `curate_flow` on a small real HH-RLHF sample,
an LLM judge on a real `vllm serve` (the tiny local model), people verifying gold in a real
Argilla server through their own API keys, and Prefect running the flows.

While the flow waits in Argilla, a thread plays the annotators: it polls the dataset and answers
every record it has not answered yet, as the UI would. The flow itself polls with a stored
deadline; nothing here sleeps to synchronize.
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from annotation.settings import (
    LABEL_CANDIDATE_1,
    LABEL_CANDIDATE_2,
    LABEL_CANNOT_DECIDE,
    META_ORDER,
    QUESTION_PREFERENCE,
)
from pipeline.store import Workspace
from schemas.labels import CandidateOrder
from tests import flow_helpers
from tests.annotation_helpers import respond, server_records
from tests.fixtures.argilla_server import ArgillaServer
from tests.fixtures.vllm_server import VLLMServer

prefect_api = flow_helpers.prefect_api

pytestmark = [pytest.mark.slow, pytest.mark.argilla, pytest.mark.vllm]

KEY_ENV = "SYNPREF_E2E_ARGILLA_KEY"
URL_ENV = "SYNPREF_E2E_ARGILLA_URL"
PAIRS_PER_SPLIT = 30
SEED_SIZE = 6
HUMAN_PER_ROUND = 2
ITERATIONS = 2
EXPORT_SHARD_ROWS = 7
RUN_TIMEOUT_S = 1200.0


def short_hh_sample(shared_raw: Path, out: Path) -> Path:
    """The shortest HH-RLHF test transcripts of two splits, as an HH-RLHF file of their own.

    Short pairs keep every judge prompt (guideline, attributes, two worked examples) inside the
    tiny served model's context, so the LLM judge's votes are real votes, not refusals.
    """
    rows: list[str] = []
    for split in ("helpful-base", "harmless-base"):
        with gzip.open(shared_raw / "hh-rlhf" / split / "test.jsonl.gz", "rt", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        size = [len(json.loads(line)["chosen"]) + len(json.loads(line)["rejected"]) for line in lines]
        keep = sorted(range(len(lines)), key=lambda i: (size[i], i))[:PAIRS_PER_SPLIT]
        rows.extend(lines[i] for i in sorted(keep))
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.writelines(rows)
    return out


def e2e_config(shared_raw: Path, tmp: Path, server: ArgillaServer, vllm: VLLMServer, dataset: str) -> Path:
    sample = short_hh_sample(shared_raw, tmp / "hh-short.jsonl.gz")
    config = tmp / "synpref.toml"
    config.write_text(f"""
workspace = "{tmp / 'ws'}"

[[sources]]
path = "{sample}"
format = "hh-rlhf"
name = "hh-rlhf/short"
license = "MIT"

[clean]
benchmarks = ["{shared_raw}/llmbar/Dataset/LLMBar/Natural/dataset.json"]

[attributes]
enabled = true
kind = "heuristic"

[rm]
kind = "embedding-head"
epochs = 3
hidden = 32

# The LLM judge on the real vLLM server decides silver (weight 2); the gold RM votes beside it.
[[judges]]
name = "tiny-llm"
kind = "openai"
model = "{vllm.model}"
endpoints = ["{vllm.base_url}"]
both_orders = false
examples = 2
weight = 2.0
concurrency = 4
retries = 2
extra_body = {{structured_outputs = {{choice = ["1", "2"]}}}}

[[judges]]
name = "gold-rm"
kind = "rm-workspace"

[argilla]
enabled = true
api_url = "{server.url}"
api_key_env = "{KEY_ENV}"
api_url_env = "{URL_ENV}"
workspace = "{server.workspace}"
dataset = "{dataset}"
overlap = 2
batch_size = 4

[loop]
iterations = {ITERATIONS}
gold_from = "argilla"
seed_size = {SEED_SIZE}
silver_seed_size = 12
retrieve_max = 8
human_per_round = {HUMAN_PER_ROUND}
deadline_s = 240
poll_s = 0.5
shard_rows = 16
max_parallel_shards = 2
seed = 5

[stage2]
enabled = true
recycle_flips = true
max_judged = 12

[export]
shard_rows = {EXPORT_SHARD_ROWS}
""")
    return config


class Annotators(threading.Thread):
    """Both annotators answer every record of the dataset, each with their own API key.

    They prefer the source's chosen response, except on the first record they see, where both
    prefer the other one (so one gold label is the humans' flip of the source's label).
    """

    def __init__(self, server: ArgillaServer, dataset: str) -> None:
        super().__init__(name="annotators", daemon=True)
        self.server, self.dataset = server, dataset
        self.stop = threading.Event()
        self.answered: set[tuple[str, str]] = set()
        self.seen: dict[str, dict[str, Any]] = {}  # pair_id -> the record as first answered
        self.flipped: str | None = None
        self.error: BaseException | None = None
        self.failures: list[str] = []  # answers the server did not take; retried on the next poll
        self._user_ids: dict[str, str] = {}

    def user_id(self, username: str) -> str:
        """The annotator's Argilla user id (responses in record listings carry it)."""
        if username not in self._user_ids:
            annotator = next(a for a in self.server.annotators if a.username == username)
            reply = httpx.get(f"{self.server.url}/api/v1/me", timeout=30,
                              headers={"X-Argilla-Api-Key": annotator.api_key})
            reply.raise_for_status()
            self._user_ids[username] = str(reply.json()["id"])
        return self._user_ids[username]

    def dataset_id(self) -> str | None:
        items = owner_get(self.server, "me/datasets")["items"]
        return next((d["id"] for d in items if d["name"] == self.dataset), None)

    def answer(self, record: dict[str, Any]) -> None:
        pair_id = record["external_id"]
        self.seen.setdefault(pair_id, record)
        if self.flipped is None:
            self.flipped = pair_id
        chosen_first = CandidateOrder(record["metadata"][META_ORDER]) == CandidateOrder.chosen_first
        keeps = chosen_first != (pair_id == self.flipped)
        label = LABEL_CANDIDATE_1 if keeps else LABEL_CANDIDATE_2
        # An answer the server already holds (its reply lost to a client timeout on a busy
        # machine) is not sent twice; one it refused or never got is sent again on the next poll.
        on_server = {str(r.get("user_id")) for r in record.get("responses") or []}
        for annotator in self.server.annotators:
            key = (pair_id, annotator.username)
            if key in self.answered:
                continue
            if self.user_id(annotator.username) in on_server:
                self.answered.add(key)
                continue
            try:
                respond(self.server, annotator, record, label, rationale="e2e")
            except (AssertionError, httpx.HTTPError) as exc:
                self.failures.append(f"{annotator.username} on {pair_id}: {exc!r}")
                if len(self.failures) > 50:
                    raise
                continue
            self.answered.add(key)

    def run(self) -> None:
        try:
            dataset_id = None
            while not self.stop.is_set():
                try:
                    dataset_id = dataset_id or self.dataset_id()
                except httpx.HTTPError as exc:
                    self.failures.append(f"finding the dataset: {exc!r}")
                if dataset_id is not None:
                    try:
                        records = server_records(self.server, dataset_id)
                    except httpx.HTTPError as exc:  # a busy server: read again on the next poll
                        self.failures.append(f"listing records: {exc!r}")
                        records = []
                    for record in sorted(records, key=lambda r: r["external_id"]):
                        self.answer(record)
                self.stop.wait(0.2)  # the poll interval while the flow has nothing new pushed
        except BaseException as exc:  # handed to the test thread
            self.error = exc


def run_with_annotators(config_path: Path, server: ArgillaServer, dataset: str) -> tuple[dict[str, Any],
                                                                                          Annotators]:
    from flows.curate import curate_flow
    from schemas.config import SynprefConfig

    annotators = Annotators(server, dataset)
    annotators.start()
    try:
        result = curate_flow(SynprefConfig.load(config_path))
    finally:
        annotators.stop.set()
        annotators.join(timeout=60)
    assert annotators.error is None, f"the annotators failed: {annotators.error!r}"
    return result, annotators


def table(ws: Workspace, name: str) -> pl.DataFrame:
    return pl.from_arrow(ws.read(name))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def e2e_run(prefect_api: str, shared_raw: Path, argilla_server: ArgillaServer, vllm_server: VLLMServer,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted curate run with humans in Argilla and the LLM judge on vLLM."""
    tmp = tmp_path_factory.mktemp("e2e")
    dataset = f"e2e-{uuid.uuid4().hex[:8]}"
    config_path = e2e_config(shared_raw, tmp, argilla_server, vllm_server, dataset)
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, argilla_server.owner.api_key)
    mp.delenv(URL_ENV, raising=False)
    started = time.monotonic()
    try:
        result, annotators = run_with_annotators(config_path, argilla_server, dataset)
    finally:
        mp.undo()
    seconds = time.monotonic() - started
    assert seconds < RUN_TIMEOUT_S, f"the e2e run took {seconds:.0f} s"
    from schemas.config import SynprefConfig

    config = SynprefConfig.load(config_path)
    return {"config": config, "result": result, "annotators": annotators, "dataset": dataset,
            "ws": Workspace(config.workspace), "seconds": seconds}


def owner_get(server: ArgillaServer, path: str) -> Any:
    reply = httpx.get(f"{server.url}/api/v1/{path}", headers={"X-Argilla-Api-Key": server.owner.api_key},
                      timeout=30)
    reply.raise_for_status()
    return reply.json()


def pushed_records(server: ArgillaServer, dataset: str) -> tuple[list[dict[str, Any]], str]:
    """The dataset's records (with responses and suggestions) and its preference question's id."""
    dataset_id = next(d["id"] for d in owner_get(server, "me/datasets")["items"] if d["name"] == dataset)
    questions = owner_get(server, f"datasets/{dataset_id}/questions")["items"]
    preference = next(q["id"] for q in questions if q["name"] == QUESTION_PREFERENCE)
    return server_records(server, dataset_id), preference


def llm_suggestion(record: dict[str, Any], question_id: str) -> dict[str, Any] | None:
    """The judges' vote on the preference question, when the LLM judge took part in it."""
    return next((s for s in record["suggestions"]
                 if s["question_id"] == question_id and "tiny-judge" in (s.get("agent") or "")), None)


def test_humans_in_argilla_verify_the_gold_set(
    e2e_run: dict[str, Any], argilla_server: ArgillaServer
) -> None:
    ws, annotators = e2e_run["ws"], e2e_run["annotators"]
    records, preference = pushed_records(argilla_server, e2e_run["dataset"])
    pushed = {r["external_id"] for r in records}
    # The seed batch, then HUMAN_PER_ROUND retrieved pairs in each round.
    assert len(records) == len(pushed) == SEED_SIZE + ITERATIONS * HUMAN_PER_ROUND

    verifications = table(ws, "verifications")
    assert verifications.height == 2 * len(pushed)
    assert set(verifications["pair_id"]) == pushed
    assert set(verifications["annotator"]) == {a.username for a in argilla_server.annotators}
    assert set(verifications["status"]) == {"submitted"}

    gold = table(ws, "gold")
    assert set(gold["origin"]) == {"human"} and set(gold["pair_id"]) == pushed
    verdicts = dict(zip(gold["pair_id"], gold["verdict"], strict=True))
    assert verdicts.pop(annotators.flipped) == "rejected", "the humans' flip of the source label is gold"
    assert set(verdicts.values()) == {"chosen"}

    # The judges voted before each push: every record carries the LLM judge's suggestion, and the
    # annotators saw it when they answered.
    for record in [*records, *annotators.seen.values()]:
        suggestion = llm_suggestion(record, preference)
        assert suggestion is not None, f"record {record['external_id']} has no suggestion from the LLM judge"
        assert suggestion["value"] in (LABEL_CANDIDATE_1, LABEL_CANDIDATE_2, LABEL_CANNOT_DECIDE)
        assert suggestion["type"] == "model" and 0.0 <= suggestion["score"] <= 1.0


def test_the_llm_judge_on_vllm_labels_silver_but_never_the_human_batch(e2e_run: dict[str, Any]) -> None:
    ws = e2e_run["ws"]
    gold_ids = set(table(ws, "gold")["pair_id"])
    judgments = table(ws, "judgments")
    llm = judgments.filter(pl.col("judge") == "tiny-llm")
    assert set(llm["model"]) == {"tiny-judge"}
    assert llm.filter(pl.col("verdict").is_in(["chosen", "rejected"])).height == llm.height > 0
    assert llm["margin"].is_not_null().all()
    assert gold_ids <= set(llm["pair_id"]), "every pair sent to humans was voted on first"
    # The gold RM joins the vote once it exists (the retrieved pairs sent to humans, silver).
    assert judgments.filter(pl.col("judge") == "gold-rm").height > 0

    silver = table(ws, "silver")
    assert silver.height > 0 and set(silver["origin"]) == {"judges"}
    assert not gold_ids & set(silver["pair_id"]), "human-verified pairs never join silver"


def test_round_files_record_each_batch(e2e_run: dict[str, Any]) -> None:
    ws = e2e_run["ws"]
    for round_ in range(1, ITERATIONS + 1):
        summary = ws.read_json(f"rounds/{round_}/summary.json")
        assert summary["round"] == round_
        assert summary["counts"]["gold"] == SEED_SIZE + round_ * HUMAN_PER_ROUND
        assert 0.0 <= summary["gold_accuracy"] <= 1.0 and summary["gold_accuracy_per_category"]
        assert summary["retrieval"]["retrieved"] >= HUMAN_PER_ROUND
        assert summary["judges"]["judged"] > 0
        # Agreement is among judges that earned a vote on evaluation gold; two evaluation pairs
        # are too few for any judge to earn one, and the round says so.
        assert (summary["judges"]["agreement"] is None) == (not summary["judges"]["voting_judges"])
        assert summary["trust"]["gold_split"]["gold_eval"] >= 1 and summary["trust"]["warnings"]
        retrieved = ws.read_json(f"rounds/{round_}/steps/human-retrieved.json")
        # gold_added is this batch's share, not the dataset's running total.
        assert retrieved["mode"] == "argilla" and retrieved["timed_out"] is False
        assert retrieved["sent"] == retrieved["finished"] == retrieved["gold_added"] == HUMAN_PER_ROUND
        assert retrieved["gold_total"] == SEED_SIZE + round_ * HUMAN_PER_ROUND
        assert retrieved["judge_votes"]["judged"] == HUMAN_PER_ROUND
    seed = ws.read_json("rounds/1/summary.json")["human"]
    assert seed["mode"] == "argilla" and seed["sent"] == seed["gold_added"] == SEED_SIZE
    assert seed["timed_out"] is False and seed["judge_votes"]["judged"] == SEED_SIZE


def test_stage2_decides_and_the_export_holds_the_curated_set(e2e_run: dict[str, Any]) -> None:
    ws, result, annotators = e2e_run["ws"], e2e_run["result"], e2e_run["annotators"]
    stage2 = result["stage2"]
    assert ws.read_json("stage2/summary.json") is not None
    decisions = table(ws, "decisions")
    assert stage2["candidates"] > 0
    for filter_ in ("A", "B"):
        assert decisions.filter(pl.col("filter") == filter_).height == stage2["candidates"]
    assert (decisions["reason"].str.len_chars() > 0).all()
    assert not set(decisions["pair_id"]) & set(table(ws, "gold")["pair_id"])

    curated = table(ws, "curated")
    assert curated.height == result["selected"] == result["export"]["rows"] > 0
    assert curated["pair_id"].n_unique() == curated.height
    assert len(ws.manifest("curated")["shards"]) == math.ceil(curated.height / EXPORT_SHARD_ROWS)
    human = curated.filter(pl.col("origin") == "human")
    assert human.height == SEED_SIZE + ITERATIONS * HUMAN_PER_ROUND
    flipped = curated.filter(pl.col("pair_id") == annotators.flipped).row(0, named=True)
    pool = table(ws, "pool").filter(pl.col("pair_id") == annotators.flipped).row(0, named=True)
    assert flipped["flipped"] and flipped["chosen"][0]["content"] == pool["rejected"]
    assert "human" in ws.read_bytes("curated/README.md").decode()
    report = json.loads(ws.read_bytes("report/report.json"))
    rounds = [str(r) for r in range(1, ITERATIONS + 1)]
    assert [row["round"] for row in report["table"]] == [*rounds, "stage 2"]
