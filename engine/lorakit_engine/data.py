"""Prepared data, as the product writes it: `<dir>/tokens.safetensors` (flat `input_ids` and `labels` int32,
-100 = no loss; `offsets` int64, n_samples + 1) and `manifest.json`. Memory-mapped; read sample by sample
(batches.py makes micro-batches of them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .protocol import EngineError

IGNORE = -100
_CHUNK = 1 << 24  # tokens scanned at a time when checking ids

_FIX = "Delete this prepared/<hash>/ folder: lorakit prepares the data again on the next run."


def bad_data(dir: Path, what: str) -> EngineError:
    return EngineError("DATA_INVALID", f"prepared data {dir}: {what}", _FIX)


class Prepared:
    """One prepared split. `len()` samples; `sample(i)` → (input_ids, labels) int64 tensors."""

    def __init__(self, dir: Path | str):
        self.dir = Path(dir)
        path = self.dir / "tokens.safetensors"
        if not path.is_file():
            raise bad_data(self.dir, "tokens.safetensors is missing")
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types
            raise bad_data(self.dir, f"tokens.safetensors cannot be read ({e})") from e
        keys = set(self._file.keys())
        missing = {"input_ids", "labels", "offsets"} - keys
        if missing:
            raise bad_data(self.dir, f"tokens.safetensors lacks {sorted(missing)} (has {sorted(keys)})")
        self._ids = self._file.get_slice("input_ids")
        self._labels = self._file.get_slice("labels")
        for name, sl, dtype in (("input_ids", self._ids, "I32"), ("labels", self._labels, "I32")):
            if sl.get_dtype() != dtype or len(sl.get_shape()) != 1:
                raise bad_data(
                    self.dir, f"{name} must be flat int32, found {sl.get_dtype()} {sl.get_shape()}"
                )
        self.offsets = self._file.get_tensor("offsets")
        if self.offsets.dtype != torch.int64 or self.offsets.dim() != 1 or len(self.offsets) < 1:
            raise bad_data(self.dir, f"offsets must be int64 [n_samples + 1], found {self.offsets.dtype}")
        n_tokens = self._ids.get_shape()[0]
        if self._labels.get_shape()[0] != n_tokens:
            raise bad_data(self.dir, f"labels has {self._labels.get_shape()[0]} tokens, input_ids {n_tokens}")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n_tokens:
            raise bad_data(self.dir, f"offsets must run from 0 to {n_tokens}")
        if len(self.offsets) > 1 and bool((self.offsets[1:] <= self.offsets[:-1]).any()):
            raise bad_data(self.dir, "offsets must increase (every sample holds at least one token)")
        self.n_tokens = n_tokens
        manifest = self.dir / "manifest.json"
        self.manifest = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self._ids[a:b].long(), self._labels[a:b].long()

    def lengths(self) -> list[int]:
        """Every sample's token count, in file order."""
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def max_id(self) -> int:
        top = -1
        for a in range(0, self.n_tokens, _CHUNK):
            top = max(top, int(self._ids[a : a + _CHUNK].max()))
        return top

    def check(self, samples: int, tokens: int, vocab_rows: int | None = None) -> None:
        """The counts the plan promises, and every id inside the embedding."""
        if len(self) != samples or self.n_tokens != tokens:
            raise bad_data(
                self.dir,
                f"the plan says {samples} samples / {tokens} tokens, "
                f"the files hold {len(self)} / {self.n_tokens}",
            )
        if vocab_rows is not None and self.n_tokens:
            top = self.max_id()
            if top >= vocab_rows:
                raise EngineError(
                    "DATA_VOCAB_MISMATCH",
                    f"prepared data {self.dir} holds token id {top}, "
                    f"the model's embedding has {vocab_rows} rows",
                    "Prepare the data with the tokenizer that belongs to this model.",
                )


def pack_rows(lengths: list[int], pack_tokens: int) -> list[list[int]]:
    """`train.pack_tokens`: sample indices grouped in file order into rows of at most `pack_tokens` tokens
    (greedy: a row closes when the next sample does not fit). The rows depend on neither seed nor epoch, so
    their count, and with it the plan's total_steps, is fixed. src/data/pack.ts computes the same rows
    (both held to tests/fixtures/pack-rows-golden.json). A sample longer than `pack_tokens` is an error."""
    over = [i for i, n in enumerate(lengths) if n > pack_tokens]
    if over:
        longest = max(lengths[i] for i in over)
        raise EngineError(
            "CONFIG_PACK_TOKENS_SHORT",
            f"training sample {over[0]} has {lengths[over[0]]} tokens, more than train.pack_tokens "
            f"{pack_tokens} ({len(over)} sample(s) are; the longest has {longest})",
            f"Raise train.pack_tokens to ≥ {longest}, or lower data.max_length to ≤ {pack_tokens} "
            "(longer samples are then cut).",
        )
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if not rows or used + n > pack_tokens:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows
