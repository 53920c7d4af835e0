"""Where a FAISS index runs on GPUs: one GPU, or several holding shards or replicas.

A pool of 40M 384-d vectors is ~61 GB as float32: more than one GPU holds. Sharding splits the
vectors across the GPUs a process sees (each holds 1/n, every query visits all and the hits
merge); replicating copies the whole index to each GPU so a batch of queries spreads over them.
Only called where faiss sees a GPU; `gpu_devices` is plain arithmetic so the choice is tested
anywhere.
"""

from __future__ import annotations

from typing import Any

from schemas.config.embed import IndexConfig
from schemas.errors import SynprefError

TRAINED_KINDS = ("ivf", "ivfsq", "ivfpq")


class VectorIndexError(SynprefError, ValueError):
    """An index could not be built, loaded or searched; the message says which and why."""


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def gpu_devices(visible: int, cfg: IndexConfig) -> tuple[int, ...]:
    """The GPUs an index goes to: the first `cfg.gpus` of the `visible` ones (all when 0).

    Asking for more than are visible is an error with `use_gpu = yes` and takes what there is
    otherwise, so one config runs on a 1-GPU workstation and an 8-GPU node alike.
    """
    if visible <= 0:
        return ()
    wanted = cfg.gpus or visible
    if wanted > visible and cfg.use_gpu == "yes":
        raise VectorIndexError(f"index.gpus = {cfg.gpus}, but faiss sees {visible} GPU(s)")
    return tuple(range(min(wanted, visible)))


def gpu_cloner_options(kind: str, multi_gpu: str | None = None) -> Any:
    """How faiss copies an index of `kind` to the GPU (only called where faiss sees a GPU).

    IVF-PQ gets float16 lookup tables: GPU faiss refuses float32 ones for many sub-quantizers
    (the 96 of a 384-d embedding among them), and the search results barely move. With
    `multi_gpu` ("shard" or "replicate") the options are faiss' multi-GPU ones: sharded
    vectors are split across the GPUs (each holds 1/n, searches merge), replicas each hold the
    whole index and share the queries.
    """
    import faiss

    options = faiss.GpuClonerOptions() if multi_gpu is None else faiss.GpuMultipleClonerOptions()
    if kind == "ivfpq":
        options.useFloat16LookupTables = True
    if multi_gpu is not None:
        options.shard = multi_gpu == "shard"
        options.common_ivf_quantizer = options.shard and kind in TRAINED_KINDS
    return options


def to_gpus(index: Any, kind: str, cfg: IndexConfig, visible: int) -> tuple[Any, Any, tuple[int, ...]]:
    """`index` copied to the GPUs `cfg` asks for: (GPU index, the resources it keeps alive, devices)."""
    import faiss

    devices = gpu_devices(visible, cfg)
    if len(devices) == 1:
        resources: Any = faiss.StandardGpuResources()
        moved = faiss.index_cpu_to_gpu(resources, devices[0], index, gpu_cloner_options(kind))
        return moved, resources, devices
    resources = [faiss.StandardGpuResources() for _ in devices]
    moved = faiss.index_cpu_to_gpu_multiple_py(resources, index, gpu_cloner_options(kind, cfg.multi_gpu),
                                               list(devices))
    return moved, resources, devices
