"""The loss the loop trains on and evaluates: summed cross-entropy over the trained tokens of a micro-batch,
padded or packed alike, and the mean over a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batches import IGNORE, MicroBatch, idle, in_order
from .data import Prepared
from .kernels.packing import PackedBatch
from .parallel import Single
from .protocol import finite


def token_ce_sum(model, batch: MicroBatch, device) -> torch.Tensor:
    """Summed cross-entropy over the micro-batch's trained tokens (labels aligned with input_ids; shifted by
    the model for a packed row, here for a padded batch), the batch moved to `device` first."""
    if isinstance(batch, PackedBatch):  # the fast path: fused output projection + cross-entropy
        if torch.device(device).type == "cuda":
            batch = batch.pinned()  # the copy to the GPU then never waits for the GPU's queue
        return model(**batch.to(device).model_inputs(), loss_reduction="sum").loss
    batch = batch.to(device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    target = torch.cat((batch.labels[:, 1:], torch.full_like(batch.labels[:, :1], IGNORE)), dim=1)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum"
    )


@torch.no_grad()
def evaluate(
    model, data: Prepared, batch_size: int, pad_id: int, device, parallel: Single, packed: bool = False
) -> tuple[float | None, int]:
    """Mean loss over the split's trained tokens; data parallel, each rank takes its share of the batches."""
    was = model.training
    model.eval()
    total, tokens = 0.0, 0
    mine = list(in_order(data, batch_size, pad_id, rank=parallel.rank, world=parallel.world, packed=packed))
    for batch in parallel.eval_batches(mine, idle(pad_id, packed)):
        tokens += batch.trained_tokens
        total += float(token_ce_sum(model, batch, device))
    total, n = parallel.sum_floats(total, tokens)
    model.train(was)
    return (finite(total / n) if n else None), int(n)
