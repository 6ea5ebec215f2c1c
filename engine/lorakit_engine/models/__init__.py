"""The model front door: `load_model(path)` builds any supported family from a local folder.

`model_type` in config.json picks the family (registry.py, from protocol/families.json): ChatGLM3 is built
natively (chatglm.py), the others with transformers' own classes. Nothing is fetched and no code shipped in
the folder is run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_config
from .registry import Family, builder_of, families, get_family, layer_count, supported_model_types

__all__ = [
    "Family",
    "families",
    "get_family",
    "layer_count",
    "load_model",
    "read_config",
    "supported_model_types",
]


def load_model(
    path: Path | str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> nn.Module:
    """The model in `path`, weights cast to `dtype` on `device`, in eval mode. Raises EngineError
    MODEL_LOAD_FAILED (the file named, a hint) for an unknown model_type or damaged files."""
    folder = Path(path)
    return builder_of(get_family(read_config(folder).get("model_type")))(folder, dtype, device)
