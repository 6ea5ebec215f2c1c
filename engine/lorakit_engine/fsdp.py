"""FSDP2 mechanics for `train.shard: fsdp` (parallel.Sharded says when each is used): the base split over the
ranks instead of copied to each, for a base that does not fit one device.

- `shard` applies `fully_shard` to each decoder layer and to the causal LM itself, which moves each rank's
  slice of every parameter (the base loaded on the CPU) to its device: no device ever holds the whole base.
  Frozen base weights and fp32 LoRA weights share a layer's group (FSDP2 takes mixed dtypes and mixed
  requires_grad), dtypes as loaded.
- FSDP reduce-scatters the LoRA gradients itself. The engine backpropagates `ce_local / tokens_global`, whose
  gradients must be summed, not averaged: every group gets divide factor 1 and plain sum reductions (gloo has
  no pre-multiplied sum).
- Checkpoints and the adapter hold whole tensors (`full_adapter_state`, `full_optimizer_state`, gathered by
  every rank), the files an unsharded run writes: a checkpoint resumes sharded or not. Loading one cuts the
  optimizer state into this rank's slices again (`shard_optimizer_state`; the adapter's plain tensors go
  through FSDP2's own load hooks).
"""

from __future__ import annotations

import torch
from torch import nn

from .protocol import EngineError


def decoder_layers(model) -> nn.ModuleList:
    """The model's ModuleList of decoder blocks (`model.layers` in transformers' models,
    `transformer.encoder.layers` in the native ChatGLM): the largest ModuleList of identical blocks."""
    best: nn.ModuleList | None = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1:
            if best is None or len(m) > len(best):
                best = m
    if best is None:
        raise EngineError(
            "SHARD_UNSUPPORTED",
            f"found no list of decoder layers in {type(model).__name__} to shard",
            "Set train.shard to none (and train on a device the base fits).",
        )
    return best


def shard(model, device: torch.device) -> None:
    """Shard the peft `model` (on the CPU) over every rank of the default group, in place: each decoder layer,
    then the causal LM under the peft wrapper (whose forward both training and `generate` call). The shards
    land on `device`. The adapter starts as rank 0's (whatever each rank's RNG drew); gradients are summed
    over the ranks."""
    from torch.distributed import broadcast, get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for p in model.parameters():
        if p.requires_grad:  # through the device: NCCL takes no host tensors
            on_device = p.data.to(device)
            broadcast(on_device, src=0)
            p.data.copy_(on_device)
    mesh = init_device_mesh(device.type, (get_world_size(),))
    lm = model.get_base_model()
    for layer in decoder_layers(lm):
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh)
    for m in lm.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)


def is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def rng_kept(device: torch.device):
    """A context whose random draws (an idle forward's dropout) leave this process's RNG as it was."""
    return torch.random.fork_rng([device] if device.type == "cuda" else [])


def whole(t):
    """A DTensor gathered whole onto the CPU (collective), any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.detach().full_tensor().cpu() if isinstance(t, DTensor) else t


def full_adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters, whole, on the CPU, named as in `model.state_dict()` (what peft's
    `save_pretrained(state_dict=…)` takes). Collective: every rank calls it."""
    return {n: whole(p) for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer) -> dict:
    """`optimizer.state_dict()` with whole tensors: what an unsharded run saves. Collective."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: whole(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def shard_optimizer_state(optimizer, state: dict) -> dict:
    """A whole `optimizer.state_dict()` (saved sharded or not) cut into this rank's slices of the parameters'
    DTensors, for `optimizer.load_state_dict`. Local: every rank holds the whole state."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v
            for k, v in s.items()
        }
    return {**state, "state": out}
