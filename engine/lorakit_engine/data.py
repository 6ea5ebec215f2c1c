"""Prepared data, as the product writes it: `<dir>/tokens.safetensors` (flat `input_ids` and `labels` int32,
-100 = no loss; `offsets` int64, n_samples + 1), `manifest.json` and `SHA256SUMS` (files.py). Memory-mapped;
read sample by sample (batches.py makes micro-batches of them). A run trains only on files that match their
SHA256SUMS (`verify`: the whole file hashed, ~0.8 s per GiB, about what the token-id scan costs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from . import files
from .protocol import EngineError

IGNORE = -100
_CHUNK = 1 << 24  # tokens scanned at a time when checking ids

_FIX = "Delete this prepared/<hash>/ folder: lorakit prepares the data again on the next run."


def bad_data(dir: Path, what: str) -> EngineError:
    return EngineError("DATA_INVALID", f"prepared data {dir}: {what}", _FIX)


# What a prepared split's SHA256SUMS must vouch for before a run reads the split.
SPLIT_FILES = ("tokens.safetensors", "manifest.json")


def verify(dir: Path | str, names: tuple[str, ...] | list[str] = SPLIT_FILES) -> None:
    """DATA_CORRUPT naming the file when one of `names` in `dir` does not match the SHA256SUMS beside it."""
    dir = Path(dir)
    problems = files.check_sums(dir, names)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EngineError(
            "DATA_CORRUPT",
            f"prepared data {dir} is damaged: {problems[0]}{more}; nothing was trained on it",
            _FIX,
        )


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
        self.manifest = {}
        if manifest.is_file():
            try:
                self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested beyond the parser
                raise bad_data(self.dir, f"manifest.json is not JSON ({type(e).__name__}: {e})") from e
            if not isinstance(self.manifest, dict):
                raise bad_data(self.dir, "manifest.json is not a JSON object")

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


def read_rows(path: Path, data: Prepared, pack_tokens: int) -> list[int]:
    """The rows of `train.pack_tokens`, cut by the product and written beside the tokens
    (`rows-<pack_tokens>.safetensors`): `starts`, int64, rows + 1 sample indices in file order (row r holds
    samples starts[r] … starts[r + 1] - 1), checked against the samples: every sample in one row, in order,
    every row at most `pack_tokens` tokens."""
    if not path.is_file():
        raise bad_data(path.parent, f"{path.name} (the rows of train.pack_tokens) is missing")
    verify(path.parent, [path.name])
    try:
        with safe_open(str(path), framework="pt") as f:
            starts = f.get_tensor("starts") if "starts" in f.keys() else None
    except Exception as e:  # safetensors raises its own error types
        raise bad_data(path.parent, f"{path.name} cannot be read ({e})") from e
    if starts is None or starts.dtype != torch.int64 or starts.dim() != 1 or len(starts) < 2:
        raise bad_data(path.parent, f"{path.name} must hold `starts`, int64 [rows + 1]")
    if int(starts[0]) != 0 or int(starts[-1]) != len(data) or bool((starts[1:] <= starts[:-1]).any()):
        raise bad_data(path.parent, f"{path.name}: row starts must rise from 0 to the {len(data)} samples")
    tokens = data.offsets[starts[1:]] - data.offsets[starts[:-1]]
    if bool((tokens > pack_tokens).any()):
        row = int((tokens > pack_tokens).nonzero()[0])
        raise bad_data(
            path.parent,
            f"{path.name}: row {row} holds {int(tokens[row])} tokens, more than pack_tokens {pack_tokens}",
        )
    return starts.tolist()
