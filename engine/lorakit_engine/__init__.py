"""lorakit's engine: everything about tensors (see shared/design/ARCHITECTURE.md).

Importing the package stays light (no torch); the heavy parts load on first use.
"""


def load_model(*args, **kwargs):
    """`lorakit_engine.models.load_model`, imported on first call."""
    from .models import load_model as _load_model

    return _load_model(*args, **kwargs)
