"""Query, sort and aggregation evaluation for the OpenSearch stand-in.

Covers the query DSL subset the Argilla server sends (see argilla_server/search_engine/): match_all,
bool, term, terms, range, exists, ids, nested, simple_query_string, function_score/random_score,
knn; aggregations terms / value_count / stats; field sorts including nested sorts with mode avg.
Documents are plain dicts; a dotted path reaches through objects and lists (OpenSearch's flattening
of object arrays), so `responses.status` sees every response of a record.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from typing import Any

Doc = dict[str, Any]


class QueryError(ValueError):
    """A query the stand-in does not understand: reported as a 400, like a parsing_exception."""


def values_at(source: Any, path: str) -> list[Any]:
    """Every leaf value at a dotted path, flattening lists on the way (OpenSearch semantics)."""
    current = [source]
    for part in path.split("."):
        nxt: list[Any] = []
        for node in current:
            if isinstance(node, dict) and part in node:
                value = node[part]
                nxt.extend(value if isinstance(value, list) else [value])
            elif isinstance(node, list):
                for item in node:
                    if isinstance(item, dict) and part in item:
                        value = item[part]
                        nxt.extend(value if isinstance(value, list) else [value])
        current = nxt
    return [v for v in current if v is not None]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return str(a) == str(b)


def _compare_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _field_and_params(body: dict[str, Any]) -> tuple[str, Any]:
    fields = [k for k in body if k not in ("boost", "_name")]
    if len(fields) != 1:
        raise QueryError(f"expected exactly one field in {body}")
    return fields[0], body[fields[0]]


_TOKEN = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def _text_fields(source: Doc, patterns: list[str]) -> list[str]:
    """The string values of the fields a simple_query_string names (with `*` wildcards)."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else key)
        elif isinstance(node, list):
            for item in node:
                walk(item, prefix)
        elif isinstance(node, str):
            for pattern in patterns:
                regex = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
                if re.match(regex, prefix) or re.match(regex, prefix.rsplit(".", 1)[0] + ".*"):
                    out.append(node)
                    return

    walk(source, "")
    return out


def score(query: dict[str, Any], doc_id: str, source: Doc) -> float | None:
    """The document's score under `query`, or None when it does not match."""
    if not query:
        return 1.0
    if len(query) != 1:
        raise QueryError(f"a query has exactly one clause, got {sorted(query)}")
    kind, body = next(iter(query.items()))
    if kind == "match_all":
        return 1.0
    if kind == "term":
        field, params = _field_and_params(body)
        value = params["value"] if isinstance(params, dict) else params
        return 1.0 if any(_same(v, value) for v in values_at(source, field)) else None
    if kind == "terms":
        field, wanted = _field_and_params(body)
        have = values_at(source, field)
        return 1.0 if any(_same(v, w) for v in have for w in wanted) else None
    if kind == "range":
        field, params = _field_and_params(body)
        return 1.0 if any(_in_range(v, params) for v in values_at(source, field)) else None
    if kind == "exists":
        return 1.0 if values_at(source, body["field"]) else None
    if kind == "ids":
        return 1.0 if doc_id in [str(v) for v in body["values"]] else None
    if kind == "bool":
        return _bool_score(body, doc_id, source)
    if kind == "nested":
        return _nested_score(body, doc_id, source)
    if kind == "simple_query_string":
        terms = _tokens(body["query"])
        texts = [t for text in _text_fields(source, body.get("fields", ["*"])) for t in _tokens(text)]
        counts = Counter(texts)
        operator = body.get("default_operator", "OR").upper()
        hits = [counts[t] for t in terms]
        matched = all(hits) if operator == "AND" else any(hits)
        return float(sum(hits)) if matched and terms else None
    if kind == "function_score":
        base = score(body.get("query", {"match_all": {}}), doc_id, source)
        if base is None:
            return None
        for function in body.get("functions", []):
            if "random_score" in function:
                seed = str(function["random_score"].get("seed", ""))
                digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
                base *= int.from_bytes(digest[:6], "big") / float(1 << 48)
        return base
    if kind == "knn":
        field, params = _field_and_params(body)
        if "filter" in params and score(params["filter"], doc_id, source) is None:
            return None
        vector = values_at(source, field)
        if not vector:
            return None
        return (1.0 + _cosine(vector, params["vector"])) / 2.0
    raise QueryError(f"unsupported query type [{kind}]")


def _in_range(value: Any, params: dict[str, Any]) -> bool:
    key = _compare_key(value)
    checks = {
        "gte": lambda b: key >= b,
        "gt": lambda b: key > b,
        "lte": lambda b: key <= b,
        "lt": lambda b: key < b,
    }
    return all(checks[op](_compare_key(bound)) for op, bound in params.items() if op in checks)


def _bool_score(body: dict[str, Any], doc_id: str, source: Doc) -> float | None:
    total = 0.0
    for clause in _as_list(body.get("must")):
        s = score(clause, doc_id, source)
        if s is None:
            return None
        total += s
    for clause in _as_list(body.get("filter")):
        if score(clause, doc_id, source) is None:
            return None
    for clause in _as_list(body.get("must_not")):
        if score(clause, doc_id, source) is not None:
            return None
    should = _as_list(body.get("should"))
    if should:
        scored = [score(c, doc_id, source) for c in should]
        matched = [s for s in scored if s is not None]
        default_min = 0 if (body.get("must") or body.get("filter")) else 1
        minimum = body.get("minimum_should_match", default_min)
        if isinstance(minimum, str):
            minimum = (
                math.floor(len(should) * int(minimum.rstrip("%")) / 100)
                if minimum.endswith("%")
                else int(minimum)
            )
        if len(matched) < minimum:
            return None
        total += sum(matched)
    return total or 1.0


def _nested_score(body: dict[str, Any], doc_id: str, source: Doc) -> float | None:
    path = body["path"]
    objects = values_at(source, path)
    scores = []
    for obj in objects:
        view = _with_path(path, obj)
        s = score(body["query"], doc_id, view)
        if s is not None:
            scores.append(s)
    if not scores:
        return None
    return sum(scores) / len(scores) if body.get("score_mode", "avg") == "avg" else max(scores)


def _with_path(path: str, obj: Any) -> Doc:
    """A document holding only `obj` at `path`: how a nested query sees one nested object."""
    node: Any = obj
    for part in reversed(path.split(".")):
        node = {part: node}
    return node


def _cosine(a: list[Any], b: list[Any]) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (na * nb) if na and nb else 0.0


def sort_hits(hits: list[tuple[str, float | None, Doc]], sort: Any) -> list[tuple[str, float | None, Doc]]:
    """Stable multi-key sort; documents missing a sort value go last, as OpenSearch's default."""
    for spec in reversed(_as_list(sort)):
        if isinstance(spec, str):
            spec = {spec: {"order": "desc" if spec == "_score" else "asc"}}
        field, params = next(iter(spec.items()))
        params = {"order": params} if isinstance(params, str) else params
        descending = params.get("order", "asc") == "desc"
        keyed = [(_sort_value(hit, field, params), hit) for hit in hits]
        present = sorted(
            [(k, h) for k, h in keyed if k is not None], key=lambda kh: kh[0], reverse=descending
        )
        hits = [h for _, h in present] + [h for k, h in keyed if k is None]
    return hits


def _sort_value(hit: tuple[str, float | None, Doc], field: str, params: dict[str, Any]) -> Any:
    doc_id, hit_score, source = hit
    if field == "_score":
        return _compare_key(hit_score or 0.0)
    if field in ("_id", "id"):
        return _compare_key(doc_id)
    nested = params.get("nested")
    if nested:
        objects = values_at(source, nested["path"])
        if "filter" in nested:
            objects = [
                o
                for o in objects
                if score(nested["filter"], doc_id, _with_path(nested["path"], o)) is not None
            ]
        relative = field[len(nested["path"]) + 1 :]
        values = [v for o in objects for v in values_at(o, relative)]
    else:
        values = values_at(source, field)
    if not values:
        return None
    mode = params.get("mode", "min")
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if mode == "avg" and numbers:
        return _compare_key(sum(numbers) / len(numbers))
    keys = [_compare_key(v) for v in values]
    return max(keys) if mode == "max" else min(keys)


def aggregate(aggs: dict[str, Any], sources: list[Doc]) -> dict[str, Any]:
    """The `aggregations` part of a search response."""
    out: dict[str, Any] = {}
    for name, spec in aggs.items():
        kind = next(k for k in spec if k not in ("meta", "aggs", "aggregations"))
        params = spec[kind]
        values = [v for s in sources for v in values_at(s, params["field"])]
        if kind == "terms":
            per_doc = Counter()
            for s in sources:
                for v in {
                    str(x) if not isinstance(x, int | float) else x for x in values_at(s, params["field"])
                }:
                    per_doc[v] += 1
            buckets = sorted(per_doc.items(), key=lambda kv: (-kv[1], _compare_key(kv[0])))
            size = params.get("size", 10)
            out[name] = {
                "doc_count_error_upper_bound": 0,
                "sum_other_doc_count": sum(c for _, c in buckets[size:]),
                "buckets": [{"key": k, "doc_count": c} for k, c in buckets[:size]],
            }
        elif kind == "value_count":
            out[name] = {"value": len(values)}
        elif kind == "stats":
            numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers:
                out[name] = {
                    "count": len(numbers),
                    "min": min(numbers),
                    "max": max(numbers),
                    "avg": sum(numbers) / len(numbers),
                    "sum": sum(numbers),
                }
            else:
                out[name] = {"count": 0, "min": None, "max": None, "avg": None, "sum": 0.0}
        else:
            raise QueryError(f"unsupported aggregation type [{kind}]")
    return out
