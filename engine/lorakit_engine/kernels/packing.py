"""Padding-free packing: several samples in one row, each attending only to itself.

A packed batch is one row of T tokens (no padding computed) plus the sample boundaries `cu_seqlens`
([0, len0, len0+len1, …], int32, the flash-attention convention). Positions restart at 0 in every sample.
Labels keep the model's convention (aligned with `input_ids`, shifted inside the model), and each sample's
first label is set to -100: after the shift that is the slot where the previous sample's last token would
"predict" this sample's first token, so the loss over a packed row is exactly the sum of the samples' own
losses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

IGNORE = -100


@dataclass(frozen=True)
class PackedBatch:
    """One packed row. `n_tokens` counts trained (loss-carrying) tokens; `n_real` all tokens."""

    input_ids: torch.Tensor  # [1, T] int64
    labels: torch.Tensor  # [1, T] int64, -100 where no loss (and on every sample's first token)
    position_ids: torch.Tensor  # [1, T] int64, 0.. per sample
    cu_seqlens: torch.Tensor  # [n + 1] int32
    max_seqlen: int
    n_tokens: int
    n_real: int

    @property
    def n_samples(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def trained_tokens(self) -> int:  # the names a padded batch (batches.Batch) gives the same counts
        return self.n_tokens

    @property
    def real_tokens(self) -> int:
        return self.n_real

    def pinned(self) -> PackedBatch:
        """The same row in pinned host memory: its copy to a GPU then never waits for the GPU's queue."""
        return replace(
            self,
            input_ids=self.input_ids.pin_memory(),
            labels=self.labels.pin_memory(),
            position_ids=self.position_ids.pin_memory(),
            cu_seqlens=self.cu_seqlens.pin_memory(),
        )

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PackedBatch:
        move = {"non_blocking": non_blocking}
        return replace(
            self,
            input_ids=self.input_ids.to(device, **move),
            labels=self.labels.to(device, **move),
            position_ids=self.position_ids.to(device, **move),
            cu_seqlens=self.cu_seqlens.to(device, **move),
        )

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the model's forward (ChatGLMForConditionalGeneration or peft around it)."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
            "cu_seqlens": self.cu_seqlens,
            "max_seqlen": self.max_seqlen,
        }


def _as_list(x: Any) -> list[int]:
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()
    return list(x)


def pack_batch(
    samples: Iterable[Mapping[str, Any] | tuple[Any, Any]],
    pad_to_multiple_of: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Concatenate samples ({"input_ids", "labels"} mappings or (input_ids, labels) pairs; lists or tensors,
    labels aligned with input_ids and -100 where no loss) into one row.

    `pad_to_multiple_of` appends one padding segment (its own sample, no loss) so that T is a multiple of it:
    useful only for kernels that want static shapes; the padding is computed, so leave it off otherwise."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    cu = [0]
    n_real = 0
    for s in samples:
        s_ids, s_labels = (s["input_ids"], s["labels"]) if isinstance(s, Mapping) else s
        s_ids, s_labels = _as_list(s_ids), _as_list(s_labels)
        if len(s_ids) != len(s_labels):
            raise ValueError(f"a sample has {len(s_ids)} input_ids but {len(s_labels)} labels")
        if not s_ids:
            continue
        ids += s_ids
        labels += [IGNORE, *s_labels[1:]]
        positions += range(len(s_ids))
        cu.append(cu[-1] + len(s_ids))
        n_real += len(s_ids)
    if not ids:
        raise ValueError("pack_batch got no tokens")
    if pad_to_multiple_of and len(ids) % pad_to_multiple_of:
        extra = pad_to_multiple_of - len(ids) % pad_to_multiple_of
        ids += [pad_id] * extra
        labels += [IGNORE] * extra
        positions += range(extra)
        cu.append(cu[-1] + extra)
    lengths = [b - a for a, b in zip(cu, cu[1:], strict=False)]
    label_t = torch.tensor(labels, dtype=torch.long)[None]
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long)[None],
        labels=label_t,
        position_ids=torch.tensor(positions, dtype=torch.long)[None],
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        max_seqlen=max(lengths),
        n_tokens=int((label_t != IGNORE).sum()),
        n_real=n_real,
    )


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[1, total] positions restarting at 0 at every boundary in `cu_seqlens`."""
    idx = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].long()
    seg = torch.bucketize(idx, cu_seqlens[1:-1].long(), right=True)
    return (idx - starts[seg])[None]


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[total] the sample index of every token."""
    idx = torch.arange(total, device=cu_seqlens.device)
    return torch.bucketize(idx, cu_seqlens[1:-1].long(), right=True)
