"""Micro-batches built from a prepared split, in one of two layouts:

    padded  `Batch`: samples right-padded to the longest, with an attention mask (any model)
    packed  `PackedBatch` (kernels.packing): the samples one after another in one row without padding, their
            boundaries in `cu_seqlens`, positions restarting per sample (the fast path's varlen attention)

Training order is a pure function of (seed, epoch, micro-batch index), so a resumed run continues exactly
where the interrupted one stopped: each epoch has its own permutation of the samples, cut into micro-batches
of `batch_size` samples. With rows (`train.pack_tokens`: consecutive samples of the file grouped once, each
row a micro-batch) the permutation is of the rows instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import IGNORE, Prepared, bad_data
from .kernels.packing import PackedBatch

Pair = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels) of one sample, int64, labels aligned


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


MicroBatch = Batch | PackedBatch


def pad(pairs: list[Pair], pad_id: int) -> Batch:
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = y
    return Batch(ids, mask, labels)


def pack(pairs: list[Pair]) -> PackedBatch:
    """The samples in one row. Each sample's first label becomes -100: after the shift that slot would have
    the previous sample's last token predict this sample's first, so the row's loss is the samples' own."""
    lengths = torch.tensor([len(ids) for ids, _ in pairs])
    ends = lengths.cumsum(0)
    starts = ends - lengths
    labels = torch.cat([y for _, y in pairs])
    labels[starts] = IGNORE
    total = int(ends[-1])
    return PackedBatch(
        input_ids=torch.cat([x for x, _ in pairs])[None],
        labels=labels[None],
        position_ids=(torch.arange(total) - starts.repeat_interleave(lengths))[None],
        cu_seqlens=torch.cat((torch.zeros(1, dtype=torch.long), ends)).to(torch.int32),
        max_seqlen=int(lengths.max()),
        n_tokens=int((labels != IGNORE).sum()),
        n_real=total,
    )


def build(data: Prepared, indices: list[int], pad_id: int, packed: bool) -> MicroBatch:
    """The micro-batch of these samples, in the layout asked for."""
    pairs = [data.sample(i) for i in indices]
    return pack(pairs) if packed else pad(pairs, pad_id)


def idle(pad_id: int, packed: bool) -> MicroBatch:
    """A micro-batch that trains nothing: one padding token without a label (its loss and gradients are 0)."""
    one = (torch.full((1,), pad_id, dtype=torch.long), torch.full((1,), IGNORE, dtype=torch.long))
    return pack([one]) if packed else pad([one], pad_id)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which an epoch takes `n` samples (or rows): a permutation seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(data: Prepared, batch_size: int, world: int, row_starts: list[int] | None) -> int:
    """Micro-batches of an epoch: of `batch_size × world` samples, or of `world` rows."""
    if row_starts is not None:
        return math.ceil((len(row_starts) - 1) / world)
    return math.ceil(len(data) / (batch_size * world))


class Batches:
    """Micro-batches of one split for training: epoch `e` is a permutation seeded by (seed, e), cut into
    `ceil(n / (batch_size × world))` micro-batches (the last may be short).

    Data parallel (`world` processes, this one `rank`): micro-batch `i` holds the `batch_size × world` samples
    a single process with that batch size would take, dealt over the ranks by `deal`; `get` returns this
    rank's share, or None when the short last one leaves this rank nothing.

    `row_starts` given (row r = samples row_starts[r] … row_starts[r + 1] - 1): the units are rows instead
    of samples, one row a micro-batch; epoch `e` permutes the rows, and micro-batch `i` holds rows
    `i × world … (i + 1) × world - 1` of that order, row `i × world + rank` going to `rank` (past the last
    row: None)."""

    def __init__(
        self,
        data: Prepared,
        batch_size: int,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world: int = 1,
        row_starts: list[int] | None = None,
        packed: bool = False,
    ):
        if len(data) == 0:
            raise bad_data(data.dir, "the training split holds no samples")
        self.data, self.batch_size, self.seed, self.pad_id = data, batch_size, seed, pad_id
        self.rank, self.world, self.packed = rank, world, packed
        self.row_starts = row_starts
        self.per_epoch = micro_batches(data, batch_size, world, row_starts)
        self._order: tuple[int, list[int]] | None = None
        self._lengths = data.lengths() if world > 1 and row_starts is None else []

    def order(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s permutation of the samples (of the rows, with rows)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.row_starts) - 1 if self.row_starts is not None else len(self.data)
            self._order = (epoch, epoch_order(n, self.seed, epoch))
        return self._order[1]

    def get(self, epoch: int, index: int) -> MicroBatch | None:
        """This rank's part of micro-batch `index` (0-based) of `epoch` (all of it for a single process)."""
        if self.row_starts is not None:
            at = index * self.world + self.rank
            order = self.order(epoch)
            if at >= len(order):
                return None
            row = order[at]
            indices = list(range(self.row_starts[row], self.row_starts[row + 1]))
            return build(self.data, indices, self.pad_id, self.packed)
        size = self.batch_size * self.world
        indices = self.order(epoch)[index * size : (index + 1) * size]
        if self.world > 1:
            share = deal([self._lengths[i] for i in indices], self.world)[self.rank]
            indices = [indices[j] for j in share]
        return build(self.data, indices, self.pad_id, self.packed) if indices else None


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
    data: Prepared,
    batch_size: int,
    pad_id: int,
    limit: int | None = None,
    rank: int = 0,
    world: int = 1,
    packed: bool = False,
):
    """Micro-batches in file order (evaluation); data parallel, this rank's every `world`-th of them."""
    n = len(data) if limit is None else min(limit, len(data))
    for a in range(rank * batch_size, n, batch_size * world):
        yield build(data, list(range(a, min(a + batch_size, n))), pad_id, packed)
