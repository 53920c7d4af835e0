"""The OpenSearch stand-in answers Argilla's REST subset the way OpenSearch does."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.services.opensearch_query import QueryError, score, sort_hits, values_at
from tests.services.opensearch_standin import OpenSearchStandin

INDEX = "rg.0f0e0d0c-0000-4000-8000-000000000001"
ADD_RESPONSE = """
    if (ctx._source.responses == null) { ctx._source.responses = [] }
    for (int i=ctx._source.responses.length-1; i>=0; i--) {
        if (ctx._source.responses[i].id == params.response.id) { ctx._source.responses.remove(i); }
    }
    ctx._source.responses.add(params.response)
"""
DELETE_RESPONSE = """
    if (ctx._source.responses != null) {
        for (int i=ctx._source.responses.length-1; i>=0; i--) {
            if (ctx._source.responses[i].id == params.response.id) { ctx._source.responses.remove(i); }
        }
    }
"""

DOCS = [
    {
        "id": "a",
        "status": "pending",
        "fields": {"prompt": "How do I sort a list in Python?"},
        "metadata": {"priority": 0, "source": "hh"},
        "inserted_at": "2026-01-01T00:00:00",
    },
    {
        "id": "b",
        "status": "completed",
        "fields": {"prompt": "Write a poem about the sea"},
        "metadata": {"priority": 3, "source": "ultra"},
        "responses": [
            {"id": "r1", "status": "submitted", "user_id": "u1", "confidence": 4},
            {"id": "r2", "status": "draft", "user_id": "u2", "confidence": 2},
        ],
        "suggestions": {"preference": {"value": "1", "agent": "judge-a", "score": 0.9, "type": "model"}},
        "vectors": {"v": [1.0, 0.0]},
        "inserted_at": "2026-01-02T00:00:00",
    },
    {
        "id": "c",
        "status": "pending",
        "fields": {"prompt": "Sort numbers in Python quickly"},
        "metadata": {"priority": 1, "source": "hh"},
        "responses": [{"id": "r3", "status": "discarded", "user_id": "u1", "confidence": 1}],
        "vectors": {"v": [0.0, 1.0]},
        "inserted_at": "2026-01-03T00:00:00",
    },
]


@pytest.fixture(scope="module")
def standin() -> Iterator[OpenSearchStandin]:
    with OpenSearchStandin() as server:
        yield server


@pytest.fixture
def client(standin: OpenSearchStandin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, timeout=10) as c:
        c.delete(f"/{INDEX}", params={"ignore_unavailable": "true"})
        assert c.put(f"/{INDEX}", json={"settings": {}, "mappings": {"properties": {}}}).status_code == 200
        bulk = "".join(
            json.dumps({"index": {"_index": INDEX, "_id": d["id"]}}) + "\n" + json.dumps(d) + "\n"
            for d in DOCS
        )
        reply = c.post("/_bulk", content=bulk, headers={"Content-Type": "application/x-ndjson"}).json()
        assert reply["errors"] is False and [i["index"]["result"] for i in reply["items"]] == ["created"] * 3
        yield c


def ids(client: httpx.Client, body: dict, **params: str) -> list[str]:
    reply = client.post(f"/{INDEX}/_search", json=body, params=params)
    assert reply.status_code == 200, reply.text
    return [h["_id"] for h in reply.json()["hits"]["hits"]]


def test_root_ping_and_version(standin: OpenSearchStandin) -> None:
    assert httpx.head(standin.url).status_code == 200
    info = httpx.get(standin.url).json()
    assert info["version"]["distribution"] == "opensearch"
    assert int(info["version"]["number"].split(".")[0]) >= 2


def test_index_lifecycle_and_mapping(client: httpx.Client) -> None:
    assert client.head(f"/{INDEX}").status_code == 200
    again = client.put(f"/{INDEX}", json={})
    assert again.status_code == 400 and again.json()["error"]["type"] == "resource_already_exists_exception"
    assert client.put(f"/{INDEX}/_mapping", json={"properties": {"metadata.x": {"type": "long"}}}).json() == {
        "acknowledged": True
    }
    assert "metadata.x" in client.get(f"/{INDEX}").json()[INDEX]["mappings"]["properties"]
    assert client.delete(f"/{INDEX}").status_code == 200
    assert client.head(f"/{INDEX}").status_code == 404
    assert client.delete(f"/{INDEX}").status_code == 404
    assert client.delete(f"/{INDEX}", params={"ignore_unavailable": "true"}).status_code == 200


def test_bulk_delete_and_missing_documents(client: httpx.Client) -> None:
    bulk = json.dumps({"delete": {"_index": INDEX, "_id": "a"}}) + "\n"
    bulk += json.dumps({"delete": {"_index": INDEX, "_id": "zz"}}) + "\n"
    items = client.post("/_bulk", content=bulk).json()["items"]
    assert [i["delete"]["result"] for i in items] == ["deleted", "not_found"]
    assert ids(client, {"query": {"match_all": {}}}) == ["b", "c"]
    missing = client.post(f"/{INDEX}/_update/zz", json={"doc": {"status": "x"}})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "document_missing_exception"


def test_partial_update_merges_objects(client: httpx.Client) -> None:
    body = {"doc": {"metadata": {"priority": 9}, "status": "completed"}}
    assert client.post(f"/{INDEX}/_update/a", json=body).json()["result"] == "updated"
    doc = client.get(f"/{INDEX}/_doc/a").json()["_source"]
    assert doc["metadata"] == {"priority": 9, "source": "hh"} and doc["status"] == "completed"


def test_argilla_response_scripts(client: httpx.Client) -> None:
    response = {"id": "r9", "status": "submitted", "user_id": "u2", "confidence": 5}
    for _ in range(2):  # replacing the same response id must not duplicate it
        body = {"script": {"source": ADD_RESPONSE, "params": {"response": response}}}
        assert client.post(f"/{INDEX}/_update/a", json=body).status_code == 200
    assert client.get(f"/{INDEX}/_doc/a").json()["_source"]["responses"] == [response]
    body = {"script": {"source": DELETE_RESPONSE, "params": {"response": {"id": "r1"}}}}
    client.post(f"/{INDEX}/_update/b", json=body)
    assert [r["id"] for r in client.get(f"/{INDEX}/_doc/b").json()["_source"]["responses"]] == ["r2"]
    script = 'ctx._source["suggestions"].remove("preference")'
    client.post(f"/{INDEX}/_update/b", json={"script": script})
    assert client.get(f"/{INDEX}/_doc/b").json()["_source"]["suggestions"] == {}
    unknown = client.post(f"/{INDEX}/_update/b", json={"script": {"source": "ctx.op = 'delete'"}})
    assert unknown.status_code == 400


def test_term_terms_range_exists_ids(client: httpx.Client) -> None:
    assert ids(client, {"query": {"term": {"status": "pending"}}}) == ["a", "c"]
    assert ids(client, {"query": {"terms": {"metadata.source": ["ultra", "nope"]}}}) == ["b"]
    assert ids(client, {"query": {"range": {"metadata.priority": {"gte": 1, "lte": 3}}}}) == ["b", "c"]
    assert ids(client, {"query": {"exists": {"field": "responses"}}}) == ["b", "c"]
    assert ids(client, {"query": {"ids": {"values": ["c", "a"]}}}) == ["a", "c"]


def test_bool_and_nested_response_filters(client: httpx.Client) -> None:
    submitted_by_u1 = {
        "nested": {
            "path": "responses",
            "query": {
                "bool": {
                    "must": [
                        {"terms": {"responses.status": ["submitted"]}},
                        {"terms": {"responses.user_id": ["u1"]}},
                    ]
                }
            },
        }
    }
    assert ids(client, {"query": submitted_by_u1}) == ["b"]
    # Flattened (non-nested) matching would wrongly pair r2's status with r1's user.
    draft_by_u1 = json.loads(json.dumps(submitted_by_u1).replace("submitted", "draft"))
    assert ids(client, {"query": draft_by_u1}) == []
    pending_for_u2 = {"bool": {"must_not": {"term": {"responses.user_id": "u2"}}}}
    assert ids(client, {"query": pending_for_u2}) == ["a", "c"]
    should = {
        "bool": {
            "should": [{"term": {"status": "completed"}}, {"term": {"id": "a"}}],
            "minimum_should_match": 1,
        }
    }
    assert sorted(ids(client, {"query": should})) == ["a", "b"]
    assert ids(
        client, {"query": {"bool": {"must": [{"match_all": {}}], "filter": {"term": {"id": "c"}}}}}
    ) == ["c"]


def test_text_query_random_score_and_paging(client: httpx.Client) -> None:
    text = {
        "simple_query_string": {"query": "python sort", "fields": ["fields.*"], "default_operator": "AND"}
    }
    assert sorted(ids(client, {"query": text})) == ["a", "c"]
    seeded = {"function_score": {"query": {"match_all": {}}, "functions": [{"random_score": {"seed": "u1"}}]}}
    first = ids(client, {"query": seeded})
    assert sorted(first) == ["a", "b", "c"] and ids(client, {"query": seeded}) == first
    reply = client.post(
        f"/{INDEX}/_search", json={"query": {"match_all": {}}}, params={"from": 1, "size": 1}
    ).json()
    assert reply["hits"]["total"]["value"] == 3 and len(reply["hits"]["hits"]) == 1


def test_sorts_including_nested_avg(client: httpx.Client) -> None:
    assert ids(client, {"query": {"match_all": {}}, "sort": [{"metadata.priority": "desc"}]}) == [
        "b",
        "c",
        "a",
    ]
    nested = {"responses.confidence": {"order": "asc", "mode": "avg", "nested": {"path": "responses"}}}
    # b averages 3, c has 1, a has no response and goes last.
    assert ids(client, {"query": {"match_all": {}}, "sort": [nested]}) == ["c", "b", "a"]


def test_aggregations(client: httpx.Client) -> None:
    body = {
        "query": {"match_all": {}},
        "aggs": {
            "terms_agg": {"terms": {"field": "status", "size": 10}},
            "count_values": {"value_count": {"field": "responses.status"}},
            "numeric_stats": {"stats": {"field": "metadata.priority"}},
        },
    }
    aggs = client.post(f"/{INDEX}/_search", json=body, params={"size": 0}).json()["aggregations"]
    assert aggs["terms_agg"]["buckets"] == [
        {"key": "pending", "doc_count": 2},
        {"key": "completed", "doc_count": 1},
    ]
    assert aggs["count_values"]["value"] == 3
    assert aggs["numeric_stats"]["min"] == 0 and aggs["numeric_stats"]["max"] == 3


def test_knn_with_filter(client: httpx.Client) -> None:
    body = {"query": {"knn": {"vectors.v": {"vector": [0.9, 0.1], "k": 2}}}}
    assert ids(client, body) == ["b", "c"]
    body["query"]["knn"]["vectors.v"]["filter"] = {"bool": {"must_not": [{"ids": {"values": ["b"]}}]}}
    assert ids(client, body) == ["c"]


def test_unsupported_query_is_a_400(client: httpx.Client) -> None:
    reply = client.post(f"/{INDEX}/_search", json={"query": {"fuzzy": {"fields.prompt": "x"}}})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "parsing_exception"


def test_pure_helpers() -> None:
    doc = {"a": [{"b": 1}, {"b": [2, 3]}], "c": None}
    assert values_at(doc, "a.b") == [1, 2, 3] and values_at(doc, "c") == []
    with pytest.raises(QueryError):
        score({"term": {}, "terms": {}}, "x", doc)
    hits = [("x", 1.0, {"p": 2}), ("y", 1.0, {}), ("z", 1.0, {"p": 1})]
    assert [h[0] for h in sort_hits(hits, [{"p": {"order": "asc"}}])] == ["z", "x", "y"]
