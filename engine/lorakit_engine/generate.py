"""Greedy samples from prompt ids, batched with left padding: one `sample` event per prompt with the new ids
(without the stop token) and whether a stop token ended it.

Three ways, best first: the model's own `generate_greedy` (native families), transformers' `generate`, and a
plain loop without a KV cache, one prompt at a time (anything else with a causal-LM forward).
"""

from __future__ import annotations

import torch

from .plan import Plan
from .protocol import Emit


def _unwrap(model):
    """The model under a peft wrapper; LoRA layers live inside it, so it computes the adapted function."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _cut(row: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for i, tok in enumerate(row):
        if tok in stop_ids:
            return row[:i], True
    return row, False


@torch.no_grad()
def greedy(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    batch_size: int = 8,
    synced: bool = False,
) -> list[tuple[list[int], bool]]:
    """(new ids without the stop token, stopped) per prompt. `synced`: every rank of a sharded (FSDP) model
    runs this with the same prompts, and no rank may stop its forwards before the others (transformers'
    `synced_gpus`; the native and plain loops stop together because greedy decoding of the same weights and
    prompts gives every rank the same tokens)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    # the model's own device where it says (a native ChatGLM3's token table may sit in host memory)
    device = getattr(net, "device", None) or next(net.parameters()).device
    stops = set(stop_ids)
    out: list[tuple[list[int], bool]] = []
    try:
        for a in range(0, len(prompts), batch_size):
            chunk = prompts[a : a + batch_size]
            if hasattr(net, "generate_greedy"):
                ids, mask = _left_pad(chunk, pad_id, device)
                new = net.generate_greedy(ids, max_new_tokens, stop_ids=stop_ids, attention_mask=mask)
                out.extend(_cut(row, stops) for row in new.tolist())
            elif hasattr(net, "generate") and getattr(net, "generation_config", None) is not None:
                out.extend(_hf_generate(net, chunk, max_new_tokens, stop_ids, pad_id, device, stops, synced))
            else:
                out.extend(_plain(net, p, max_new_tokens, stops, device) for p in chunk)
    finally:
        net.train(was_training)
    return out


def _hf_generate(net, chunk, max_new_tokens, stop_ids, pad_id, device, stops, synced=False):
    from transformers import GenerationConfig

    ids, mask = _left_pad(chunk, pad_id, device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )
    seq = net.generate(input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=synced)
    return [_cut(row, stops) for row in seq[:, ids.shape[1] :].tolist()]


def _plain(net, prompt: list[int], max_new_tokens: int, stops: set[int], device) -> tuple[list[int], bool]:
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        tok = int(net(input_ids=ids).logits[0, -1].argmax())
        if tok in stops:
            return new, True
        new.append(tok)
        ids = torch.cat((ids, torch.tensor([[tok]], device=device)), dim=1)
    return new, False


def emit_samples(model, plan: Plan, phase: str, emit: Emit, synced: bool = False) -> None:
    """One `sample` event per held-out prompt of the plan, greedy from `model`."""
    s = plan.samples
    if not s.items:
        return
    prompts = [it.prompt_ids for it in s.items]
    results = greedy(model, prompts, s.max_new_tokens, s.stop_ids, plan.data.pad_id, synced=synced)
    for item, (ids, stopped) in zip(s.items, results, strict=True):
        emit({"type": "sample", "phase": phase, "index": item.index, "output_ids": ids, "stopped": stopped})
