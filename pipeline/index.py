"""FAISS vector index over pair embeddings: exact for small pools, IVF/HNSW for large ones.

Vectors are unit length and the metric is the inner product, so scores are cosines. The index
kind is chosen from the pool size (`IndexConfig`): flat (exact) up to `flat_max`, IVF-Flat up
to `ivfpq_min`, IVF-PQ beyond; `hnsw` and `ivfsq` (8-bit scalar codes, a quarter of the memory
of IVF-Flat) on request. When faiss sees GPUs the index runs there, on one or sharded/replicated
over several (pipeline/index_gpu.py). Indexes persist in the workspace under `indexes/<name>/`
and grow by `add`.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.index_gpu import TRAINED_KINDS as _TRAINED_KINDS
from pipeline.index_gpu import VectorIndexError, gpu_cloner_options, gpu_count, gpu_devices, to_gpus
from pipeline.store import Workspace
from schemas.config.embed import IndexConfig

__all__ = ["KINDS", "VectorIndex", "VectorIndexError", "choose_kind", "choose_nlist", "gpu_cloner_options",
           "gpu_count", "gpu_devices"]
log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "ivfsq", "ivfpq", "hnsw")
_GPU_MAX_K = 2048  # faiss GPU indexes answer at most this many neighbours per query

Hits = list[list[tuple[str, float]]]


def choose_kind(n: int, cfg: IndexConfig) -> str:
    if cfg.kind != "auto":
        if cfg.kind not in KINDS:
            raise VectorIndexError(
                f"unknown index kind {cfg.kind!r}; choose auto or one of {', '.join(KINDS)}"
            )
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    return "ivf" if n < cfg.ivfpq_min else "ivfpq"


def choose_nlist(n: int, cfg: IndexConfig) -> int:
    """About sqrt(n) cells (at least 39 training points each, faiss' own floor).

    Fewer, larger cells than the common 4 * sqrt(n): on clustered embeddings the true
    neighbours spread over several cells, and with sqrt(n) cells nprobe 16 keeps recall@10
    >= 0.95 where 4 * sqrt(n) cells needed nprobe 64.
    """
    if cfg.nlist:
        return cfg.nlist
    return int(max(1, min(math.sqrt(max(n, 1)), n // 39, 65_536)))


class VectorIndex:
    """Unit vectors keyed by string ids (pair_ids), searchable by cosine."""

    def __init__(self, index: Any, ids: list[str], kind: str, cfg: IndexConfig) -> None:
        self.cfg = cfg
        self.kind = kind
        self.ids = ids
        self._label_of = {pid: i for i, pid in enumerate(ids)}
        self._index = index
        self.on_gpu = False
        self.gpus: tuple[int, ...] = ()
        self._set_search_params()

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"VectorIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}, gpu={self.on_gpu}, "
                f"gpus={list(self.gpus)}, multi_gpu={self.cfg.multi_gpu!r})")

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __contains__(self, pair_id: object) -> bool:
        return pair_id in self._label_of

    # -- building -------------------------------------------------------------------------

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, cfg: IndexConfig | None = None) -> VectorIndex:
        """A new index over `vectors` (unit rows), its kind chosen from their number."""
        cfg = cfg or IndexConfig()
        vectors = _as_matrix(vectors)
        if len(ids) != len(vectors):
            raise VectorIndexError(f"{len(ids)} ids for {len(vectors)} vectors")
        kind = choose_kind(len(vectors), cfg)
        index = _new_faiss_index(kind, vectors.shape[1] if vectors.size else 0, len(vectors), cfg)
        if kind in _TRAINED_KINDS:
            index.train(_training_sample(vectors, index))
        out = cls(index, [], kind, cfg)
        out._maybe_to_gpu()
        out.add(ids, vectors)
        return out

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add vectors of ids not yet indexed; returns how many were added.

        A flat index chosen automatically becomes IVF once it outgrows `flat_max`.
        """
        vectors = _as_matrix(vectors)
        if len(ids) != len(vectors):
            raise VectorIndexError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(vectors) and vectors.shape[1] != self.dim:
            raise VectorIndexError(f"vectors have dimension {vectors.shape[1]}, the index {self.dim}")
        fresh = [i for i, pid in enumerate(ids) if pid not in self._label_of]
        fresh = list({ids[i]: i for i in fresh}.values())  # one vector per id: its last
        if not fresh:
            return 0
        new_ids = [ids[i] for i in fresh]
        new_vectors = vectors[fresh] if len(fresh) < len(ids) else vectors
        if self.kind == "flat" and self.cfg.kind == "auto" and len(self) + len(fresh) > self.cfg.flat_max:
            everything = np.concatenate([self.reconstruct_all(), new_vectors])
            rebuilt = VectorIndex.build([*self.ids, *new_ids], everything, self.cfg)
            self.__dict__.update(rebuilt.__dict__)
            return len(fresh)
        self._index.add(new_vectors)
        for pid in new_ids:
            self._label_of[pid] = len(self.ids)
            self.ids.append(pid)
        return len(fresh)

    def reconstruct_all(self) -> np.ndarray:
        """The stored vectors (exact for flat indexes), for rebuilding as another kind."""
        cpu = self._cpu_index()
        if self.kind in _TRAINED_KINDS:
            import faiss

            faiss.extract_index_ivf(cpu).make_direct_map()
        return cpu.reconstruct_n(0, cpu.ntotal)

    # -- searching ------------------------------------------------------------------------

    def search_labels(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss answer: (similarities, integer labels; -1 where fewer than k exist)."""
        queries = _as_matrix(queries)
        k = max(1, min(k, len(self), _GPU_MAX_K if self.on_gpu else len(self)))
        if len(self) == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self._index.search(queries, k)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Iterable[str] = (),
        *,
        query_ids: Sequence[str] | None = None,
    ) -> Hits:
        """Top-k (pair_id, cosine) per query, best first, never returning an id in `exclude`
        (nor, with `query_ids`, the query's own id).

        Excluded ids are filtered after the search; queries that come up short are searched
        again with a larger k until they have k hits or the index is exhausted.
        """
        queries = _as_matrix(queries)
        if query_ids is not None and len(query_ids) != len(queries):
            raise VectorIndexError(f"{len(query_ids)} query ids for {len(queries)} queries")
        excluded = {self._label_of[p] for p in exclude if p in self._label_of}
        own = [self._label_of.get(q, -1) for q in query_ids] if query_ids is not None else None
        hits: Hits = [[] for _ in range(len(queries))]
        wanted = min(k, len(self) - len(excluded) - (1 if query_ids is not None else 0))
        todo = np.arange(len(queries))
        fetch = min(len(self), k + min(len(excluded), 4 * k) + 1)
        while len(todo) and wanted > 0:
            sims, labels = self.search_labels(queries[todo], fetch)
            short = []
            for row, q in enumerate(todo):
                found = [
                    (self.ids[label], float(sim))
                    for sim, label in zip(sims[row], labels[row], strict=True)
                    if label >= 0 and label not in excluded and (own is None or label != own[q])
                ][:k]
                hits[q] = found
                if len(found) < wanted and fetch < min(len(self), _GPU_MAX_K if self.on_gpu else len(self)):
                    short.append(q)
            todo = np.asarray(short, dtype=np.int64)
            fetch = min(len(self), fetch * 4)
        return hits

    # -- persistence ----------------------------------------------------------------------

    def save(self, ws: Workspace, name: str, meta: dict[str, Any] | None = None) -> None:
        """Write `indexes/<name>/` (index, ids, meta.json last: a reader sees all or nothing)."""
        import faiss

        folder = f"indexes/{name}"
        tag = uuid.uuid4().hex[:8]
        index_file, ids_file = f"index-{tag}.faiss", f"ids-{tag}.parquet"
        cpu = self._cpu_index()
        if ws.is_local:
            target = ws.local_path(folder, index_file)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp-" + tag)
            faiss.write_index(cpu, str(tmp))
            os.replace(tmp, target)
        else:
            ws.write_bytes(f"{folder}/{index_file}", faiss.serialize_index(cpu).tobytes())
        ws.write_bytes(f"{folder}/{ids_file}", _ids_parquet(self.ids))
        old = ws.read_json(f"{folder}/meta.json", default={}) or {}
        ws.write_json(
            f"{folder}/meta.json",
            {
                **(meta or {}),
                "kind": self.kind,
                "dim": self.dim,
                "ntotal": len(self),
                "index_file": index_file,
                "ids_file": ids_file,
                "config": self.cfg.model_dump(),
            },
        )
        for stale in (old.get("index_file"), old.get("ids_file")):
            if stale and stale not in (index_file, ids_file):
                ws.remove(f"{folder}/{stale}")

    @classmethod
    def load(cls, ws: Workspace, name: str, cfg: IndexConfig | None = None) -> VectorIndex:
        import faiss

        folder = f"indexes/{name}"
        meta = ws.read_json(f"{folder}/meta.json")
        if meta is None:
            raise VectorIndexError(f"no saved index {name!r} in {ws.uri}")
        if ws.is_local:
            index = faiss.read_index(str(ws.local_path(folder, meta["index_file"])))
        else:
            raw = np.frombuffer(ws.read_bytes(f"{folder}/{meta['index_file']}"), dtype=np.uint8)
            index = faiss.deserialize_index(raw)
        ids = pq.read_table(pa.BufferReader(ws.read_bytes(f"{folder}/{meta['ids_file']}")))
        id_list = ids.column("pair_id").to_pylist()
        if index.ntotal != len(id_list):
            raise VectorIndexError(
                f"index {name!r} in {ws.uri} holds {index.ntotal} vectors for {len(id_list)} ids"
            )
        out = cls(index, id_list, meta["kind"], cfg or IndexConfig.model_validate(meta.get("config", {})))
        out._maybe_to_gpu()
        return out

    @staticmethod
    def saved_meta(ws: Workspace, name: str) -> dict[str, Any] | None:
        return ws.read_json(f"indexes/{name}/meta.json")

    # -- internals ------------------------------------------------------------------------

    def _cpu_index(self) -> Any:
        if not self.on_gpu:
            return self._index
        import faiss

        return faiss.index_gpu_to_cpu(self._index)

    def _maybe_to_gpu(self) -> None:
        if self.cfg.use_gpu == "no" or self.on_gpu:
            return
        gpus = gpu_count()
        if gpus == 0:
            if self.cfg.use_gpu == "yes":
                raise VectorIndexError("use_gpu = yes, but faiss sees no GPU (install faiss-gpu)")
            return
        if self.kind == "hnsw":
            return  # faiss has no GPU HNSW; it stays on the CPU
        try:
            moved, resources, devices = to_gpus(self._index, self.kind, self.cfg, gpus)
        except RuntimeError as exc:  # e.g. a PQ code size GPU faiss has no kernel for
            if self.cfg.use_gpu == "yes":
                raise VectorIndexError(
                    f"faiss could not move the {self.kind} index to the GPU: {exc}") from exc
            log.warning("the %s index stays on the CPU: faiss could not move it to the GPU: %s",
                        self.kind, exc)
            return
        self.gpus = devices
        self._resources = resources
        self._index = moved
        self.on_gpu = True
        self._set_search_params()

    def _set_search_params(self) -> None:
        import faiss

        if self.kind in _TRAINED_KINDS:
            space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
            space.set_index_parameter(self._index, "nprobe", self.cfg.nprobe)
        elif self.kind == "hnsw":
            faiss.ParameterSpace().set_index_parameter(self._index, "efSearch", max(64, self.cfg.nprobe * 8))


def _new_faiss_index(kind: str, dim: int, n: int, cfg: IndexConfig) -> Any:
    import faiss

    if dim <= 0:
        raise VectorIndexError("cannot build an index without vectors (dimension unknown)")
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        return faiss.index_factory(dim, "HNSW32,Flat", metric)
    nlist = choose_nlist(n, cfg)
    # "np": no polysemous training; searches never use it, and it costs minutes at 96 sub-quantizers
    codes = {"ivf": "Flat", "ivfsq": "SQ8", "ivfpq": f"PQ{_pq_m(dim)}x8np"}[kind]
    index = faiss.index_factory(dim, f"IVF{nlist},{codes}", metric)
    faiss.extract_index_ivf(index).cp.niter = cfg.train_iterations
    return index


def _pq_m(dim: int) -> int:
    """Sub-quantizers for IVF-PQ: one byte per 4 dimensions (the largest divisor of dim <= dim/4)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _training_sample(vectors: np.ndarray, index: Any) -> np.ndarray:
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    size = min(len(vectors), max(nlist * 64, 10_000))
    if size >= len(vectors):
        return vectors
    rng = np.random.default_rng(0)  # a fixed sample: the same pool always gives the same cells
    return vectors[np.sort(rng.choice(len(vectors), size=size, replace=False))]


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    return np.ascontiguousarray(array)


def _ids_parquet(ids: list[str]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"pair_id": pa.array(ids, pa.string())}), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def workspace_index(ws: Workspace, table: str, cfg: IndexConfig | None = None) -> VectorIndex:
    """The saved index of an embeddings table, brought up to date and saved again.

    Shards appended since the last save are added incrementally; when a shard re-embeds a pair
    already indexed (its attributes changed) or the table was rewritten, the index is rebuilt.
    """
    from pipeline.embed import read_vectors

    cfg = cfg or IndexConfig()
    name = table.replace("/", "--")
    shards = [s["file"] for s in ws.manifest(table)["shards"]]
    meta = VectorIndex.saved_meta(ws, name)
    if meta is not None and meta.get("config") == cfg.model_dump():
        indexed = meta.get("shards", [])
        if shards[: len(indexed)] == indexed:
            if len(indexed) == len(shards):
                return VectorIndex.load(ws, name, cfg)
            index = VectorIndex.load(ws, name, cfg)
            ids, vectors = read_vectors(ws, table, shards=shards[len(indexed) :])
            if not any(pid in index for pid in ids):
                index.add(ids, vectors)
                index.save(ws, name, {"table": table, "shards": shards})
                return index
    ids, vectors = read_vectors(ws, table)
    if not ids:
        raise VectorIndexError(f"{table} in {ws.uri} holds no vectors yet; embed the pool first")
    index = VectorIndex.build(ids, vectors, cfg)
    index.save(ws, name, {"table": table, "shards": shards})
    return index
