"""Prepared data, as the product writes it: `<dir>/tokens.safetensors` (flat `input_ids` and `labels` int32,
-100 = no loss; `offsets` int64, n_samples + 1) and `manifest.json`. Memory-mapped; read sample by sample.

Batching is a pure function of (seed, epoch, micro-batch index), so a resumed run continues exactly where the
interrupted one stopped: each epoch has its own permutation, cut into right-padded micro-batches. With
`train.pack_tokens` a micro-batch is a packed row instead: rows fixed once from the file order (`pack_rows`),
the rows shuffled per epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .protocol import EngineError

IGNORE = -100
_CHUNK = 1 << 24  # tokens scanned at a time when checking ids

_FIX = "Prepare the data again with lorakit (`lorakit prepare`), which rewrites prepared/<hash>/."


def _bad(dir: Path, what: str) -> EngineError:
    return EngineError("DATA_INVALID", f"prepared data {dir}: {what}", _FIX)


class Prepared:
    """One prepared split. `len()` samples; `sample(i)` → (input_ids, labels) int64 tensors."""

    def __init__(self, dir: Path | str):
        self.dir = Path(dir)
        path = self.dir / "tokens.safetensors"
        if not path.is_file():
            raise _bad(self.dir, "tokens.safetensors is missing")
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types
            raise _bad(self.dir, f"tokens.safetensors cannot be read ({e})") from e
        keys = set(self._file.keys())
        missing = {"input_ids", "labels", "offsets"} - keys
        if missing:
            raise _bad(self.dir, f"tokens.safetensors lacks {sorted(missing)} (has {sorted(keys)})")
        self._ids = self._file.get_slice("input_ids")
        self._labels = self._file.get_slice("labels")
        for name, sl, dtype in (("input_ids", self._ids, "I32"), ("labels", self._labels, "I32")):
            if sl.get_dtype() != dtype or len(sl.get_shape()) != 1:
                raise _bad(self.dir, f"{name} must be flat int32, found {sl.get_dtype()} {sl.get_shape()}")
        self.offsets = self._file.get_tensor("offsets")
        if self.offsets.dtype != torch.int64 or self.offsets.dim() != 1 or len(self.offsets) < 1:
            raise _bad(self.dir, f"offsets must be int64 [n_samples + 1], found {self.offsets.dtype}")
        n_tokens = self._ids.get_shape()[0]
        if self._labels.get_shape()[0] != n_tokens:
            raise _bad(self.dir, f"labels has {self._labels.get_shape()[0]} tokens, input_ids {n_tokens}")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n_tokens:
            raise _bad(self.dir, f"offsets must run from 0 to {n_tokens}")
        if len(self.offsets) > 1 and bool((self.offsets[1:] <= self.offsets[:-1]).any()):
            raise _bad(self.dir, "offsets must increase (every sample holds at least one token)")
        self.n_tokens = n_tokens
        manifest = self.dir / "manifest.json"
        self.manifest = {}
        if manifest.is_file():
            try:
                self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested beyond the parser
                raise _bad(self.dir, f"manifest.json is not JSON ({type(e).__name__}: {e})") from e
            if not isinstance(self.manifest, dict):
                raise _bad(self.dir, "manifest.json is not a JSON object")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self._ids[a:b].long(), self._labels[a:b].long()

    def max_id(self) -> int:
        top = -1
        for a in range(0, self.n_tokens, _CHUNK):
            top = max(top, int(self._ids[a : a + _CHUNK].max()))
        return top

    def check(self, samples: int, tokens: int, vocab_rows: int | None = None) -> None:
        """The counts the plan promises, and every id inside the embedding."""
        if len(self) != samples or self.n_tokens != tokens:
            raise _bad(
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


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [b, t] int64, right-padded with pad_id
    attention_mask: torch.Tensor  # [b, t] int64
    labels: torch.Tensor  # [b, t] int64, -100 on padding; aligned with input_ids (the loss shifts)

    @property
    def trained_tokens(self) -> int:
        """Tokens that carry loss once shifted: a label at position 0 is never predicted."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> Batch:
        """On the device; to a GPU through pinned memory, so the copy never waits for the GPU's queue."""
        pin = torch.device(device).type == "cuda"
        return Batch(
            *(
                (t.pin_memory() if pin else t).to(device, non_blocking=True)
                for t in (self.input_ids, self.attention_mask, self.labels)
            )
        )


def collate(data: Prepared, indices: list[int], pad_id: int) -> Batch:
    pairs = [data.sample(i) for i in indices]
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = y
    return Batch(ids, mask, labels)


def sample_lengths(data: Prepared) -> list[int]:
    return (data.offsets[1:] - data.offsets[:-1]).tolist()


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


class Batches:
    """Micro-batches of one split for training: epoch `e` is a permutation seeded by (seed, e), cut into
    `ceil(n / (batch_size × world))` micro-batches (the last may be short).

    Data parallel (`world` processes, this one `rank`): micro-batch `i` holds the `batch_size × world` samples
    a single process with that batch size would take, dealt over the ranks by `deal`; `get` returns this
    rank's share, or None when the short last one leaves this rank nothing.

    `pack_tokens` set: the units are `pack_rows`' rows instead of samples, one row a micro-batch; epoch `e`
    permutes the rows, and micro-batch `i` holds rows `i × world … (i + 1) × world - 1` of that order, row
    `i × world + rank` going to `rank` (past the last row: None)."""

    def __init__(
        self,
        data: Prepared,
        batch_size: int,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world: int = 1,
        pack_tokens: int | None = None,
    ):
        if len(data) == 0:
            raise _bad(data.dir, "the training split holds no samples")
        self.data, self.batch_size, self.seed, self.pad_id = data, batch_size, seed, pad_id
        self.rank, self.world = rank, world
        self.rows = pack_rows(sample_lengths(data), pack_tokens) if pack_tokens else None
        units = len(self.rows) if self.rows is not None else len(data)
        self.per_epoch = math.ceil(units / (world if self.rows is not None else batch_size * world))
        self._order: tuple[int, list[int]] | None = None
        self._lengths = sample_lengths(data) if world > 1 and self.rows is None else []

    def order(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s permutation of the samples (of the rows, when packing)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.rows) if self.rows is not None else len(self.data)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(n, generator=g).tolist())
        return self._order[1]

    def get(self, epoch: int, index: int) -> Batch | None:
        """This rank's part of micro-batch `index` (0-based) of `epoch` (all of it for a single process)."""
        if self.rows is not None:
            at = index * self.world + self.rank
            order = self.order(epoch)
            return collate(self.data, self.rows[order[at]], self.pad_id) if at < len(order) else None
        size = self.batch_size * self.world
        indices = self.order(epoch)[index * size : (index + 1) * size]
        if self.world > 1:
            share = deal([self._lengths[i] for i in indices], self.world)[self.rank]
            indices = [indices[j] for j in share]
        return collate(self.data, indices, self.pad_id) if indices else None


def deal(lengths: list[int], world: int) -> list[list[int]]:
    """Positions of one micro-batch's samples for each of `world` ranks. A rank's cost is its padded size,
    samples × its longest sample; the step waits for the dearest rank. Sorted longest first, the samples are
    cut into at most `world` runs whose largest padded size is the smallest possible: the rank with the
    longest samples takes fewer of them. That size is never above `ceil(n / world)` × the longest sample,
    what an even split in sample counts can cost, and is mostly well below it."""
    ranked = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    longest = [lengths[i] for i in ranked]

    def cut(cap: int) -> list[list[int]] | None:  # greedy runs of padded size ≤ cap; None: more than world
        runs, at = [], 0
        while at < len(ranked):
            n = max(1, cap // longest[at])
            runs.append(ranked[at : at + n])
            at += n
            if len(runs) > world:
                return None
        return runs

    if not lengths:
        return [[] for _ in range(world)]
    lo, hi = longest[0], longest[0] * math.ceil(len(lengths) / world)  # hi always fits
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cut(mid) is not None else (mid + 1, hi)
    runs = cut(lo) or []
    return runs + [[] for _ in range(world - len(runs))]


def in_order(
    data: Prepared, batch_size: int, pad_id: int, limit: int | None = None, rank: int = 0, world: int = 1
):
    """Micro-batches in file order (evaluation); data parallel, this rank's every `world`-th of them."""
    n = len(data) if limit is None else min(limit, len(data))
    for a in range(rank * batch_size, n, batch_size * world):
        yield collate(data, list(range(a, min(a + batch_size, n))), pad_id)
