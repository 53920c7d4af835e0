"""Readers for every preference-data format synpref ingests, one module per format family.

`load_pairs(path, format="auto", ...)` returns the pool-shaped pairs, the quarantined rows (file,
row, field, reason, raw text) and the dropped rows (ties, undecidable majorities).
"""

from pipeline.sources.detect import FORMAT_NAMES, FORMATS, detect_format
from pipeline.sources.files import SourceReadError
from pipeline.sources.loader import (
    SourceSpec,
    iter_benchmark_prompts,
    iter_pair_batches,
    load_pairs,
)
from pipeline.sources.records import LoadedPairs, RowError

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "LoadedPairs",
    "RowError",
    "SourceReadError",
    "SourceSpec",
    "detect_format",
    "iter_benchmark_prompts",
    "iter_pair_batches",
    "load_pairs",
]
