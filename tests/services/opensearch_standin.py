"""A small OpenSearch-compatible HTTP server, so the real Argilla server runs in tests.

No OpenSearch or Elasticsearch can be installed on a CI machine without Docker, and Argilla needs
one. This stand-in implements the REST subset Argilla 2.x calls (read in
argilla_server/search_engine/): `HEAD /`, `GET /`, index create/exists/delete, `PUT _mapping`,
`_bulk` (index, create, delete), `_update` (a partial `doc` or one of Argilla's three fixed
Painless scripts), and `_search` (see opensearch_query). Data lives in memory; it is a test
double for membership and status, not for ranking quality.

Run it in a thread (`OpenSearchStandin().start()`) or as a process:
`python -m tests.services.opensearch_standin --port 9200`.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.services.opensearch_query import QueryError, aggregate, score, sort_hits

VERSION = {
    "distribution": "opensearch",
    "number": "2.11.0",
    "build_type": "standin",
    "lucene_version": "9.7.0",
    "minimum_wire_compatibility_version": "7.10.0",
    "minimum_index_compatibility_version": "7.0.0",
}

_REMOVE_SUGGESTION = re.compile(r'ctx\._source\["suggestions"\]\.remove\("([^"]+)"\)')


class ApiError(Exception):
    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason

    def body(self) -> dict[str, Any]:
        error = {"type": self.kind, "reason": self.reason}
        return {"error": {"root_cause": [error], **error}, "status": self.status}


def deep_merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """A partial document update: objects merge key by key, everything else is replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = value


class Store:
    """Indices in memory: name -> mappings, settings and documents in insertion order."""

    def __init__(self) -> None:
        self.indices: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()

    def index(self, name: str) -> dict[str, Any]:
        if name not in self.indices:
            raise ApiError(404, "index_not_found_exception", f"no such index [{name}]")
        return self.indices[name]

    def create_index(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name in self.indices:
            raise ApiError(400, "resource_already_exists_exception", f"index [{name}] already exists")
        self.indices[name] = {
            "mappings": body.get("mappings", {}),
            "settings": body.get("settings", {}),
            "docs": {},
            "versions": {},
        }
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def put_mapping(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        mappings = self.index(name)["mappings"]
        mappings.setdefault("properties", {}).update(body.get("properties", {}))
        return {"acknowledged": True}

    def put_doc(self, name: str, doc_id: str, source: dict[str, Any], *, create: bool = False) -> dict:
        index = self.index(name)
        exists = doc_id in index["docs"]
        if create and exists:
            raise ApiError(409, "version_conflict_engine_exception", f"[{doc_id}]: document exists")
        index["docs"][doc_id] = source
        index["versions"][doc_id] = index["versions"].get(doc_id, 0) + 1
        return self._result(name, doc_id, "updated" if exists else "created", 200 if exists else 201)

    def delete_doc(self, name: str, doc_id: str) -> dict[str, Any]:
        index = self.index(name)
        if index["docs"].pop(doc_id, None) is None:
            return self._result(name, doc_id, "not_found", 404)
        return self._result(name, doc_id, "deleted", 200)

    def update_doc(self, name: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        index = self.index(name)
        source = index["docs"].get(doc_id)
        if source is None:
            raise ApiError(404, "document_missing_exception", f"[{doc_id}]: document missing")
        if "doc" in body:
            deep_merge(source, body["doc"])
        elif "script" in body:
            self._run_script(source, body["script"])
        else:
            raise ApiError(400, "action_request_validation_exception", "script or doc is missing")
        index["versions"][doc_id] += 1
        return self._result(name, doc_id, "updated", 200)

    @staticmethod
    def _run_script(source: dict[str, Any], script: Any) -> None:
        """Argilla's three fixed scripts: add/replace a response, delete one, drop a suggestion."""
        text = script if isinstance(script, str) else script.get("source", "")
        params = {} if isinstance(script, str) else script.get("params", {})
        if "responses.add(params.response)" in text:
            response = params["response"]
            responses = [r for r in source.get("responses") or [] if r.get("id") != response.get("id")]
            source["responses"] = [*responses, response]
        elif "responses.remove" in text:
            response_id = params["response"].get("id")
            if source.get("responses") is not None:
                source["responses"] = [r for r in source["responses"] if r.get("id") != response_id]
        elif match := _REMOVE_SUGGESTION.search(text):
            (source.get("suggestions") or {}).pop(match.group(1), None)
        else:
            raise ApiError(400, "illegal_argument_exception", f"script not supported: {text[:80]}")

    def _result(self, name: str, doc_id: str, result: str, status: int) -> dict[str, Any]:
        version = self.indices[name]["versions"].get(doc_id, 1)
        return {
            "_index": name,
            "_id": doc_id,
            "_version": version,
            "result": result,
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "status": status,
        }

    def bulk(self, lines: list[dict[str, Any]], default_index: str | None) -> dict[str, Any]:
        items, errors, i = [], False, 0
        while i < len(lines):
            action, meta = next(iter(lines[i].items()))
            name, doc_id = meta.get("_index", default_index), str(meta.get("_id", ""))
            try:
                if action in ("index", "create"):
                    i += 1
                    result = self.put_doc(name, doc_id, lines[i], create=action == "create")
                elif action == "delete":
                    result = self.delete_doc(name, doc_id)
                elif action == "update":
                    i += 1
                    result = self.update_doc(name, doc_id, lines[i])
                else:
                    raise ApiError(400, "illegal_argument_exception", f"unknown bulk action [{action}]")
            except ApiError as exc:
                result = {"_index": name, "_id": doc_id, "status": exc.status, "error": exc.body()["error"]}
            errors = errors or (not 200 <= result["status"] < 300 and result.get("result") != "not_found")
            items.append({action: result})
            i += 1
        return {"took": 1, "errors": errors, "items": items}

    def search(self, name: str, body: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        index = self.index(name)
        query = body.get("query", {"match_all": {}})
        try:
            hits = []
            for doc_id, source in index["docs"].items():
                s = score(query, doc_id, source)
                if s is not None and (
                    "post_filter" not in body or score(body["post_filter"], doc_id, source) is not None
                ):
                    hits.append((doc_id, s, source))
            if "sort" in body:
                hits = sort_hits(hits, body["sort"])
            else:
                hits = sorted(hits, key=lambda h: -(h[1] or 0.0))
            aggregations = aggregate(body.get("aggs", body.get("aggregations", {})), [h[2] for h in hits])
        except (QueryError, KeyError, TypeError) as exc:
            raise ApiError(400, "parsing_exception", str(exc)) from exc
        start = int(params.get("from", body.get("from", 0)) or 0)
        size = int(params.get("size", body.get("size", 10)) or 0)
        with_source = params.get("_source", "true") != "false" and body.get("_source", True) is not False
        sorted_by_field = "sort" in body
        page = [
            {
                "_index": name,
                "_id": doc_id,
                "_score": None if sorted_by_field else s,
                **({"_source": source} if with_source else {}),
            }
            for doc_id, s, source in hits[start : start + size]
        ]
        out: dict[str, Any] = {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(hits), "relation": "eq"},
                "max_score": max((h[1] or 0.0 for h in hits), default=None),
                "hits": page,
            },
        }
        if aggregations:
            out["aggregations"] = aggregations
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        params = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            with self.server.store.lock:
                status, body = self._route(self.command, parts, params, raw)
        except ApiError as exc:
            status, body = exc.status, exc.body()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            status, body = 400, ApiError(400, "parse_exception", str(exc)).body()
        payload = b"" if self.command == "HEAD" else json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    def _route(
        self, method: str, parts: list[str], params: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        store = self.server.store
        if not parts:
            return 200, {
                "name": "synpref-standin",
                "cluster_name": "synpref",
                "cluster_uuid": "standin",
                "version": VERSION,
                "tagline": "The OpenSearch Project: https://opensearch.org/",
            }
        if parts[-1] == "_bulk":
            lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            return 200, store.bulk(lines, parts[0] if len(parts) == 2 else None)
        if parts[0] == "_cluster":
            return 200, {"cluster_name": "synpref", "status": "green", "number_of_nodes": 1}
        if parts[-1] == "_refresh":
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        body = json.loads(raw) if raw.strip() else {}
        name = parts[0]
        if len(parts) == 1:
            if method == "HEAD":
                return (200 if name in store.indices else 404), {}
            if method == "PUT":
                return 200, store.create_index(name, body)
            if method == "DELETE":
                if name not in store.indices and params.get("ignore_unavailable") == "true":
                    return 200, {"acknowledged": True}
                store.index(name)
                del store.indices[name]
                return 200, {"acknowledged": True}
            if method == "GET":
                index = store.index(name)
                return 200, {name: {"mappings": index["mappings"], "settings": index["settings"]}}
        action = parts[1]
        if action == "_mapping" and method in ("PUT", "POST"):
            return 200, store.put_mapping(name, body)
        if action == "_mapping":
            return 200, {name: {"mappings": store.index(name)["mappings"]}}
        if action == "_search" and method in ("GET", "POST"):
            return 200, store.search(name, body, params)
        if action == "_count":
            found = store.search(name, {**body, "size": 0}, {})
            return 200, {"count": found["hits"]["total"]["value"]}
        if action == "_update" and len(parts) == 3:
            result = store.update_doc(name, parts[2], body)
            return result.pop("status"), result
        if action == "_doc" and len(parts) == 3:
            doc_id = parts[2]
            if method in ("PUT", "POST"):
                result = store.put_doc(name, doc_id, body)
                return result.pop("status"), result
            if method == "DELETE":
                result = store.delete_doc(name, doc_id)
                return result.pop("status"), result
            source = store.index(name)["docs"].get(doc_id)
            if source is None:
                return 404, {"_index": name, "_id": doc_id, "found": False}
            return 200, {"_index": name, "_id": doc_id, "found": True, "_source": source}
        raise ApiError(400, "illegal_argument_exception", f"unsupported request {method} /{'/'.join(parts)}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: Store, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.store, self.verbose = store, verbose


class OpenSearchStandin:
    """The stand-in on 127.0.0.1 (port 0 = a free port), served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.store = Store()
        self._server = _Server((host, port), self.store, verbose)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpenSearchStandin:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="opensearch-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> OpenSearchStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    server = _Server((args.host, args.port), Store(), args.verbose)
    print(f"opensearch stand-in listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
