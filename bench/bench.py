"""lorakit engine vs HF Trainer + peft, side by side in one process on one GPU.

Both train LoRA on the same ChatGLM3-6B-shaped random bf16 weights (transformers' GlmForCausalLM is built
and initialised once, seed 0; lorakit's native ChatGLM3 model shares the very same tensors, q|k|v rows
concatenated into query_key_value), on the same synthetic chat samples in the same order. lorakit's side is
what `lorakit train` runs: a plan over prepared data (rows file and all), LoRA and the fast path set up by the
engine's own functions, and the engine's optimizer-step loop (lorakit_engine.loop), timed between its step
events.

    python3 bench/bench.py                       # every variant, 28 layers (about 4 minutes of GPU)
    python3 bench/bench.py --micro               # attention backends, compiled elementwise ops, GEMM ceiling
    python3 bench/bench.py --layers 2 --steps-scale 0.5 --variants hf_recipe,lk_recipe   # a smoke run

Variants (`--variants`, comma separated):
    hf_recipe         HF Trainer, Self-LLM recipe: q/k/v r8 α32 dropout 0.1, batch 4 × accumulation 2,
                      pad to longest, gradient checkpointing (20 steps; its losses are the parity reference)
    lk_recipe         lorakit on exactly hf_recipe's 8 samples per step, packed into one row, no checkpointing
    hf_tuned          HF Trainer, 16 × 1, no checkpointing
    lk_packed         lorakit, padding-free rows of ≤16,384 tokens, no checkpointing, compiled elementwise,
                      fused LoRA (followed by a torch.profiler capture of two steps)
    lk_packed_12k     the same with rows of ≤12,288 tokens
    lk_packed_8k      the same with rows of ≤8,192 tokens
    lk_packed_eager   the same without torch.compile
    lk_packed_peft    the same with peft's own LoRA forward instead of the fused one
    lk_packed_flex    the same with FlexAttention instead of varlen flash attention (not in the default
                      list: it recompiles for every new row length; --micro compares the two kernels)
    hf_8k             HF Trainer, one 8,192-token sample × accumulation 2, checkpointing
    lk_lowmem         lorakit, one 8,192-token sample per step, low-memory checkpointing
    lk_lowmem_attn    the same, also recomputing each layer's attention half a second time
    hf_alllinear16    HF Trainer, every linear layer r16 α64, 16 × 1, no checkpointing
    lk_alllinear16    lorakit, every linear layer r16 α64, rows of ≤12,288 tokens, no checkpointing

Tokens/s counts real tokens only (padding excluded); MFU = 4·N·tokens/s / peak with N = 5.98e9 (forward
2N + activation gradients 2N; recompute from checkpointing is not counted as useful work).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "engine"), str(ROOT / "engine" / "tests")]  # lorakit_engine; prepared (plans)

N_PARAMS = 5.98e9  # ChatGLM3-6B matmul parameters incl. the output layer (PERFORMANCE.md)
PEAK_H100 = 989e12  # H100 SXM dense bf16, PERFORMANCE.md's MFU reference
PEAK_H200 = (
    989e12  # H200 SXM: the same Hopper chip and clocks, dense bf16 ≈ 989 TFLOP/s (device docs, H200.md)
)
ALL = (
    "hf_recipe",
    "lk_recipe",
    "hf_tuned",
    "lk_packed",
    "lk_packed_12k",
    "lk_packed_8k",
    "lk_packed_eager",
    "lk_packed_peft",
    "hf_8k",
    "lk_lowmem",
    "lk_lowmem_attn",
    "hf_alllinear16",
    "lk_alllinear16",
)
MEMORY_PEAK: set[str] = set()  # --memory-peak
GLM_QKV = ["q_proj", "k_proj", "v_proj"]
GLM_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
LK_QKV = ["query_key_value"]
LK_ALL = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def log(*a):
    print(*a, flush=True)


# -- data: the baseline's generator, same seed ---------------------------------------------------------------


def make_samples(n: int, seed: int = 0, maxlen: int = 512, fixed: bool = False) -> list[dict]:
    """prompt 16-128 tokens (no loss), response lognormal(4.2, 0.6), total ≤ maxlen; or (fixed) exactly
    maxlen tokens, half prompt half response. Identical to hf_peft_baseline.py's sample() after seed 0."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if fixed:
            p = maxlen // 2
            r = maxlen - p
        else:
            p = rng.randint(16, 128)
            r = min(int(rng.lognormvariate(4.2, 0.6)), maxlen - p)
        ids = [rng.randint(10, 64000) for _ in range(p + r)]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * p + ids[p:]})
    return out


# -- models ------------------------------------------------------------------------------------------------


SHAPE_6B = {"vocab": 65024, "hidden": 4096, "ffn": 13696, "heads": 32, "groups": 2, "head_dim": 128}
SHAPE_TINY = {
    "vocab": 1024,
    "hidden": 128,
    "ffn": 192,
    "heads": 4,
    "groups": 2,
    "head_dim": 32,
}  # CPU dry run
DEV = "cuda"
SEED = 42  # the plan's train.seed: the loop's order of the samples
MODEL_DIR = Path()  # the plan's model: a config.json of the shape (lk_config)
WORK = Path()  # lorakit's runs: plans, prepared data, checkpoints (a temporary folder)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0


def build_glm(layers: int, shape: dict):
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    cfg = GlmConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["groups"],
        head_dim=shape["head_dim"],
        partial_rotary_factor=0.5,
        attention_bias=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        pad_token_id=0,
        eos_token_id=2,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(DEV):
        model = GlmForCausalLM(cfg).to(torch.bfloat16)
    # q | k | v rows become one tensor; GLM keeps views into it, so both models share every weight
    model.lk_qkv = []
    for layer in model.model.layers:
        attn = layer.self_attn
        fused_pair = []
        for kind in ("weight", "bias"):
            parts = [getattr(getattr(attn, p), kind) for p in GLM_QKV]
            fused = torch.cat([p.detach() for p in parts])
            sizes = [p.shape[0] for p in parts]
            for name, view in zip(GLM_QKV, fused.split(sizes), strict=True):
                setattr(getattr(attn, name), kind, torch.nn.Parameter(view, requires_grad=False))
            fused_pair.append(fused)
        model.lk_qkv.append(fused_pair)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def native_from_glm(glm):
    """lorakit's native ChatGLM3 model on the GLM's tensors (no copies)."""
    from lorakit_engine.models.chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration

    c = glm.config
    config = ChatGLMConfig(
        num_layers=c.num_hidden_layers,
        hidden_size=c.hidden_size,
        ffn_hidden_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads,
        kv_channels=c.head_dim,
        multi_query_group_num=c.num_key_value_heads,
        padded_vocab_size=c.vocab_size,
    )
    with torch.device("meta"):
        model = ChatGLMForConditionalGeneration(config)
    sd = {
        "transformer.embedding.word_embeddings.weight": glm.model.embed_tokens.weight,
        "transformer.encoder.final_layernorm.weight": glm.model.norm.weight,
        "transformer.output_layer.weight": glm.lm_head.weight,
    }
    for n, layer in enumerate(glm.model.layers):
        p, a = f"transformer.encoder.layers.{n}.", layer.self_attn
        sd[p + "self_attention.query_key_value.weight"], sd[p + "self_attention.query_key_value.bias"] = (
            glm.lk_qkv[n]
        )
        sd[p + "self_attention.dense.weight"] = a.o_proj.weight
        sd[p + "mlp.dense_h_to_4h.weight"] = layer.mlp.gate_up_proj.weight
        sd[p + "mlp.dense_4h_to_h.weight"] = layer.mlp.down_proj.weight
        sd[p + "input_layernorm.weight"] = layer.input_layernorm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
    model.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    assert not any(p.is_meta for p in model.parameters())
    return model


# -- measuring ---------------------------------------------------------------------------------------------


def summarise(name, tok_per_step, pad_per_step, times, warm, losses, extra=None):
    st = times[warm:] if len(times) > warm else times
    sec = sum(st) / len(st)
    tok_s = tok_per_step / sec
    res = {
        "variant": name,
        "step_s": round(sec, 4),
        "timed_steps": len(st),
        "real_tok_per_step": round(tok_per_step, 1),
        "real_tok_s": round(tok_s),
        "pad_efficiency": round(tok_per_step / pad_per_step, 3),
        "peak_mem_gib": round(peak_gib(), 2),
        "mfu_h200": round(4 * N_PARAMS * tok_s / PEAK_H200, 4),
        "mfu_h100ref": round(4 * N_PARAMS * tok_s / PEAK_H100, 4),
        "losses": [round(x, 5) for x in losses],
    }
    res.update(extra or {})
    return res


def fresh_memory():
    gc.collect()
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# -- the baseline: HF Trainer + peft, the recipe of hf_peft_baseline.py --------------------------------------


def run_hf(glm, data, name, bs, ga, steps, ckpt, targets, r, warm=5):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    fresh_memory()
    torch.manual_seed(0)
    glm.enable_input_require_grads()
    model = get_peft_model(
        glm,
        LoraConfig(task_type="CAUSAL_LM", target_modules=targets, r=r, lora_alpha=4 * r, lora_dropout=0.1),
    )
    tokens = {"n": 0, "pad": 0}
    micro_losses: list[torch.Tensor] = []

    class Ds(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.last = [], None

        def on_step_end(self, args, state, control, **kw):
            sync()
            now = time.perf_counter()
            if self.last is not None:
                self.t.append(now - self.last)
            self.last = now

    class SeqTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):  # data in index order, as lorakit reads it
            return torch.utils.data.SequentialSampler(data)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            micro_losses.append((loss[0] if return_outputs else loss).detach())
            return loss

    def collate(batch):
        m = max(len(b["input_ids"]) for b in batch)
        out = {
            k: torch.tensor([b[k] + ([0] if k != "labels" else [-100]) * (m - len(b[k])) for b in batch])
            for k in batch[0]
        }
        tokens["n"] += sum(len(b["input_ids"]) for b in batch)
        tokens["pad"] += m * len(batch)
        return out

    args = TrainingArguments(
        output_dir="/tmp/bench-hf",
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        bf16=True,
        use_cpu=DEV == "cpu",
        gradient_checkpointing=ckpt,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = SeqTrainer(model=model, args=args, train_dataset=Ds(), data_collator=collate, callbacks=[timer])
    fresh_memory()
    trainer.train()
    # each micro-batch's loss is its token sum over the window's trained tokens: the window loss is their sum
    vals = [float(x) for x in micro_losses]
    losses = [sum(vals[i : i + ga]) for i in range(0, len(vals), ga)]
    res = summarise(
        name,
        tokens["n"] / steps,
        tokens["pad"] / steps,
        timer.t,
        warm,
        losses,
        {"bs": bs, "ga": ga, "ckpt": ckpt, "r": r, "targets": "qkv" if targets == GLM_QKV else "all"},
    )
    model.unload()
    glm.gradient_checkpointing_disable()
    glm.disable_input_require_grads()
    del trainer, model
    fresh_memory()
    return res


# -- lorakit's engine path: the product's own loop --------------------------------------------------------


def lk_config(layers: int, shape: dict) -> Path:
    """A folder with the ChatGLM3 config.json of this shape: what the plan's model names (the weights stay in
    memory, shared with the baseline's GLM)."""
    folder = WORK / "model"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "chatglm",
        "num_layers": layers,
        "hidden_size": shape["hidden"],
        "ffn_hidden_size": shape["ffn"],
        "num_attention_heads": shape["heads"],
        "kv_channels": shape["head_dim"],
        "multi_query_group_num": shape["groups"],
        "padded_vocab_size": shape["vocab"],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def in_loop_order(data: list[dict]) -> list[tuple[list[int], list[int]]]:
    """The samples as (input_ids, labels), laid out in the prepared file so that the loop's first epoch (a
    seeded permutation of the file, batches.epoch_order) reads them in the baseline's order: both sides then
    train on the same samples, step for step."""
    from lorakit_engine.batches import epoch_order

    placed: list = [None] * len(data)
    for j, i in enumerate(epoch_order(len(data), SEED, 0)):
        placed[i] = (data[j]["input_ids"], data[j]["labels"])
    return placed


class Counted:
    """The loop's micro-batches (batches.Batches), counting the real and the computed tokens handed out."""

    def __init__(self, batches):
        self.batches, self.real, self.computed = batches, 0, 0
        self.per_epoch, self.packed = batches.per_epoch, batches.packed

    def get(self, epoch: int, index: int):
        b = self.batches.get(epoch, index)
        if b is not None:
            self.real += b.real_tokens
            self.computed += b.input_ids.numel()
        return b


def run_lk(
    glm,
    samples,
    name,
    targets,
    r,
    steps,
    out_dir,
    batch_size=1,
    pack_tokens=None,
    checkpointing="none",
    compile=True,
    attention="auto",
    fused_lora=True,
    fast=None,
    warm=3,
    profile_steps=0,
):
    """lorakit's training as `lorakit train` runs it: a plan over prepared data (micro-batches of `batch_size`
    samples, or `pack_tokens` rows), LoRA attached and the fast path set up by the engine's own functions,
    then the engine's optimizer-step loop (loop.Loop), timed between its step events. The bench's only
    departures: the weights are the baseline's tensors, and `compile`, `attention`, `fused_lora`, `fast`
    override the fast path's settings for the variants that compare them."""
    from lorakit_engine.batches import Batches
    from lorakit_engine.control import Controls
    from lorakit_engine.fast_path import prepare_training
    from lorakit_engine.kernels import configure_fast_path
    from lorakit_engine.loop import Loop
    from lorakit_engine.lora import attach
    from lorakit_engine.parallel import Single
    from lorakit_engine.plan import read_plan
    from lorakit_engine.run import check_inputs
    from prepared import make_plan, write_plan

    fresh_memory()
    profile_steps = profile_steps if DEV == "cuda" else 0
    root = WORK / name  # the plan, its prepared data and the run's last checkpoint; removed afterwards
    over = {
        "model.family": "chatglm",
        "model.model_type": "chatglm",
        "lora.targets": targets,
        "lora.r": r,
        "lora.alpha": 4 * r,
        "lora.dropout": 0.1,
        "train.total_steps": steps + profile_steps,  # the profiled steps come after the timed ones
        "train.batch_size": batch_size,
        "train.grad_accum": 1,
        "train.lr": 1e-4,
        "train.scheduler": "linear",
        "train.warmup_steps": 0,
        "train.weight_decay": 0.0,
        "train.seed": SEED,
        "train.precision": "bf16",
        "train.device": DEV,
        "train.fast_path": True,
        "train.gradient_checkpointing": {"none": False, "full": True}.get(checkpointing, checkpointing),
        "train.log_every": 1000,
        "train.keep_checkpoints": 1,
        "samples.items": [],
        "samples.before": False,
        **({"train.pack_tokens": pack_tokens} if pack_tokens else {}),
    }
    plan = read_plan(write_plan(root, make_plan(root, MODEL_DIR, train=samples, eval=False, **over)))
    inputs = check_inputs(plan)
    device, dtype = torch.device(DEV), torch.bfloat16
    torch.manual_seed(0)
    model = attach(native_from_glm(glm), targets, r, 4 * r, 0.1)
    prepare_training(model, plan, False, device, dtype, lambda e: None)
    variant = {"compile": compile, "attention": attention, "fused_lora": fused_lora, **(fast or {})}
    defaults = {"compile": DEV == "cuda", "attention": "auto", "fused_lora": True}
    changed = {k: v for k, v in variant.items() if defaults.get(k) != v}
    if changed:
        configure_fast_path(model, **changed)
    table, glm_table = model.get_input_embeddings().weight, glm.model.embed_tokens.weight
    table_on_host = table.device.type == "cpu"
    if (
        table_on_host
    ):  # low memory: the token table in host memory, shared with glm meanwhile (no device copy)
        glm_table.data = table.data
    batches = Counted(Batches(inputs.train, batch_size, SEED, 0, row_starts=inputs.row_starts, packed=True))
    marks: list[tuple[float, int, int]] = []  # (time, real, computed) at each step's end
    losses: list[float] = []
    captured: dict = {}

    def on_event(e):
        if e["type"] == "start":
            sync()
            marks.append((time.perf_counter(), 0, 0))
        elif e["type"] == "step":
            sync()
            marks.append((time.perf_counter(), batches.real, batches.computed))
            losses.append(e["loss"])
            if profile_steps and e["step"] == steps:  # the timed steps are done: profile the next ones
                captured["profiler"] = start_profiler()
            if profile_steps and e["step"] == steps + profile_steps:
                captured["profiler"].__exit__(None, None, None)

    loop = Loop(model, plan, batches, None, Single(device), on_event, Controls(), device, dtype)
    recording = name in MEMORY_PEAK and DEV == "cuda"
    if recording:  # every allocation's Python stack, for the breakdown at the peak (slows the steps down)
        base = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    loop.run()
    timed = marks[: steps + 1]
    times = [b[0] - a[0] for a, b in zip(timed, timed[1:], strict=False)]
    real, computed = timed[-1][1], timed[-1][2]
    res = summarise(
        name,
        real / steps,
        computed / steps,
        times,
        warm,
        losses[:steps],
        {
            "checkpointing": checkpointing,
            "compile": compile,
            "attention": attention,
            "fused_lora": fused_lora,
            **(fast or {}),
            "r": r,
            "targets": "qkv" if targets == LK_QKV else "all",
            "first_step_s": round(times[0], 2),
            "loop": "lorakit_engine.loop.Loop",
        },
    )
    if recording:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        res["memory_peak"] = memory_peak(snapshot, base)
        res["note"] = "steps timed while recording allocations: not a throughput figure"
    if "profiler" in captured:
        wall = marks[steps + profile_steps][0] - marks[steps][0]
        res["profile"] = profile_summary(captured["profiler"], profile_steps, wall, real / steps, out_dir)
    if table_on_host:
        glm_table.data = table.data.to(DEV)
    model.base_model.model.transformer = None  # drop the activations' owners before the next variant
    loop.optimizer.state.clear()
    del loop
    shutil.rmtree(root, ignore_errors=True)
    fresh_memory()
    return res


def memory_peak(snapshot: dict, base: int, top: int = 14) -> dict:
    """Where the peak lies: replay the allocator trace to its highest point and group the blocks alive there
    by the innermost lorakit/bench frame of the stack that allocated them. `base` was allocated before the
    recording began (weights, adapters, optimizer state)."""
    trace = [e for e in snapshot["device_traces"][0] if e["action"] in ("alloc", "free_completed")]
    cur = peak = peak_at = 0
    for i, e in enumerate(trace):
        cur += e["size"] if e["action"] == "alloc" else -e["size"]
        if cur > peak:
            peak, peak_at = cur, i
    live: dict[int, dict] = {}
    for e in trace[: peak_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        else:
            live.pop(e["addr"], None)
    groups: dict[str, int] = {}
    for e in live.values():
        where = "(no python frame)"
        for f in e.get("frames", []):
            if "lorakit_engine" in f["filename"] or f["filename"].endswith("bench.py"):
                short = f["filename"].split("lorakit_engine/")[-1].split("/")[-1]
                where = f"{short}:{f['line']} {f['name']}"
                break
        groups[where] = groups.get(where, 0) + e["size"]
    gib = 1024**3
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
    return {
        "before_recording_gib": round(base / gib, 3),
        "peak_gib": round((base + peak) / gib, 3),
        "live_at_peak_gib": [[k, round(v / gib, 3)] for k, v in ranked],
    }


def category(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "attn" in n:
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "matmul")):
        return "gemm"
    if n.startswith(("swiglu_", "rotary_", "rms_norm_")):
        return "triton (lorakit kernels)"
    if n.startswith("triton"):
        return "triton (torch.compile)"
    if "memcpy" in n or "memset" in n:
        return "copy/memset"
    return "other elementwise/reduce"


def start_profiler():
    """torch.profiler over the loop's next steps (stopped with `.__exit__` from the step event)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.__enter__()
    return prof


def profile_summary(prof, steps, wall, tok_per_step, out_dir):
    """Where `steps` profiled steps' GPU time went (`wall` seconds in all)."""
    kernels: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3
    busy = sum(kernels.values())
    cats: dict[str, float] = {}
    for k, ms in kernels.items():
        cats[category(k)] = cats.get(category(k), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    gemm_ms = cats.get("gemm", 0.0) / steps
    useful = 4 * N_PARAMS * tok_per_step  # FLOPs per step, nearly all in GEMMs (attention is small here)
    res = {
        "steps": steps,
        "wall_ms_per_step_profiled": round(wall * 1e3 / steps, 1),
        "gpu_busy_ms_per_step": round(busy / steps, 1),
        "categories_ms_per_step": {
            k: round(v / steps, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "gemm_tflops_on_4N": round(useful / (gemm_ms / 1e3) / 1e12, 1) if gemm_ms else None,
        "top_kernels_ms_per_step": [[k[:110], round(v / steps, 2), category(k)] for k, v in top],
    }
    if out_dir:
        try:
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
        except Exception:  # the sort key's name moved between torch versions
            table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
        (Path(out_dir) / "profile_lk_packed.txt").write_text(table)
    return res


# -- micro-benchmarks ----------------------------------------------------------------------------------------


def bench_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def micro(out_dir):
    import inspect

    from lorakit_engine.kernels import attention as A
    from lorakit_engine.kernels import elementwise as E

    res: dict = {}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    res["gemm_8192_tflops"] = round(2 * 8192**3 / ms / 1e9, 1)
    found = A._varlen()
    res["varlen"] = None if found is None else str(inspect.signature(found[0]))
    res["varlen_native_gqa"] = A.varlen_native_gqa() if found is not None else None
    # one 16k-token row of chat samples
    lengths = [len(s["input_ids"]) for s in make_samples(400, seed=1)]
    cu, total = [0], 0
    for n in lengths:
        if total + n > 16384:
            break
        total += n
        cu.append(total)
    cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
    m = max(b - a for a, b in zip(cu, cu[1:], strict=False))
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(total, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(total, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dout = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    # reference on the first three samples: SDPA per sample with expanded groups, float32
    outs = {}
    for backend in ("varlen", "flex"):
        try:
            ctx = A.make_packed_attention(cu_t, m, total, backend)
            out = A.packed_attention(q, k, v, ctx)
            outs[backend] = out.detach()

            def fb(ctx=ctx):
                o = A.packed_attention(q, k, v, ctx)
                torch.autograd.grad(o, (q, k, v), dout)

            res[f"attn_{backend}_fwd_bwd_ms"] = round(bench_ms(fb), 3)
            res[f"attn_{backend}_fwd_ms"] = round(
                bench_ms(lambda ctx=ctx: A.packed_attention(q, k, v, ctx)), 3
            )
            res[f"attn_{backend}_mask_build_ms"] = round(
                bench_ms(lambda backend=backend: A.make_packed_attention(cu_t, m, total, backend)), 3
            )
        except Exception as e:  # report, keep going
            res[f"attn_{backend}_error"] = f"{type(e).__name__}: {e}"[:300]
    errs = {}
    for backend, out in outs.items():
        num = den = 0.0
        for s, e in zip(cu[:4], cu[1:4], strict=False):
            qs, ks, vs = (x[s:e].float().transpose(0, 1) for x in (q, k, v))
            ks, vs = ks.repeat_interleave(16, 0), vs.repeat_interleave(16, 0)
            ref = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
            num += float((out[s:e].float() - ref).norm() ** 2)
            den += float(ref.norm() ** 2)
        errs[backend] = math.sqrt(num / den)
    res["attn_rel_err_vs_fp32_sdpa"] = {k: f"{v:.2e}" for k, v in errs.items()}
    # compiled elementwise ops: same function, fewer passes
    x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(4096, device="cuda", dtype=torch.bfloat16) + 0.5
    h = torch.randn(16384, 27392, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    qq = torch.randn(1, 16384, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(16384, device="cuda")[None]
    from lorakit_engine.models.chatglm import RotaryEmbedding

    cos, sin = RotaryEmbedding(64, 10000.0)(pos, torch.bfloat16)
    cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)
    cases = {
        "rms_norm": (lambda f: f(x, w, 1e-5), x),
        "rotary": (lambda f: f(qq, cos, sin), qq),
        "swiglu": (lambda f: f(h), h),
    }
    from lorakit_engine.kernels import rotary as KR
    from lorakit_engine.kernels import swiglu as KS

    res["triton_ok"] = {"swiglu": KS.triton_works("cuda:0"), "rotary": KR.triton_works("cuda:0")}
    fast = {"swiglu": KS._SwiGLU.apply, "rotary": KR._Rotary.apply}
    for name, (call, inp) in cases.items():
        impls = {"eager": E.op(name, False), "compiled": E.op(name, True)}
        if name in fast and res["triton_ok"][name]:
            impls["triton"] = fast[name]
        outs = {k: call(f) for k, f in impls.items()}
        gy = torch.randn_like(outs["eager"])
        grads = {k: torch.autograd.grad(y, inp, gy)[0] for k, y in outs.items()}

        def fb(f, call=call, inp=inp, gy=gy):
            y = call(f)
            torch.autograd.grad(y, inp, gy)

        for k, f in impls.items():
            res[f"{name}_{k}_ms"] = round(bench_ms(lambda f=f: fb(f)), 3)
            if k != "eager":
                ref, g_ref = outs["eager"].float(), grads["eager"].float()
                rel = float((outs[k].float() - ref).norm() / ref.norm())
                relg = float((grads[k].float() - g_ref).norm() / g_ref.norm())
                res[f"{name}_{k}_rel_err"] = f"{rel:.1e}/{relg:.1e}"
    return res


# -- main ----------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(ALL))
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--budget", type=int, default=16384)
    ap.add_argument("--micro", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny model shape on the CPU: checks the script only")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench-out"))
    ap.add_argument(
        "--memory-peak",
        default="",
        help="lorakit variants (comma separated) that record every allocation: a breakdown at the peak",
    )
    args = ap.parse_args()
    MEMORY_PEAK.update(v for v in args.memory_peak.split(",") if v)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    global DEV
    DEV = "cpu" if args.tiny else "cuda"
    shape = SHAPE_TINY if args.tiny else SHAPE_6B
    results: dict = {
        "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (tiny shape: no timing meaning)",
        "torch": torch.__version__,
        "layers": args.layers,
        "command": " ".join(sys.argv),
    }
    import peft
    import transformers

    results["transformers"], results["peft"] = transformers.__version__, peft.__version__
    log("device", results["device"], "torch", torch.__version__, "transformers", transformers.__version__)

    def save():
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))

    if args.micro:
        t0 = time.perf_counter()
        results["micro"] = micro(out_dir)
        log("MICRO", json.dumps(results["micro"]), f"({time.perf_counter() - t0:.0f} s)")
        save()

    variants = [v for v in args.variants.split(",") if v]
    if not variants:
        return
    S = lambda n: max(4, int(round(n * args.steps_scale)))  # noqa: E731
    t0 = time.perf_counter()
    glm = build_glm(args.layers, shape)
    log(f"GLM init {time.perf_counter() - t0:.1f} s")
    data = make_samples(4000)
    data8k = make_samples(64, seed=1, maxlen=8192, fixed=True)
    if args.tiny:  # ids into the tiny vocabulary, 8k samples cut to 512
        for s in data + data8k:
            for k in ("input_ids", "labels"):
                s[k] = [x % shape["vocab"] if x >= 0 else x for x in s[k]]
        data8k = [{k: v[4096 - 256 : 4096 + 256] for k, v in s.items()} for s in data8k]
    global MODEL_DIR, WORK
    WORK = Path(tempfile.mkdtemp(prefix="lorakit-bench-"))
    MODEL_DIR = lk_config(args.layers, shape)
    mixed, fixed = in_loop_order(data), in_loop_order(data8k)
    recipe_steps = S(20)

    def lk(name, samples, targets, r, steps, **kw):
        return lambda: run_lk(glm, samples, name, targets, r, steps, out_dir, **kw)

    runs = {
        "hf_recipe": lambda: run_hf(glm, data, "hf_recipe", 4, 2, recipe_steps, True, GLM_QKV, 8),
        # the recipe's 8 samples per step as one micro-batch: one packed row
        "lk_recipe": lk("lk_recipe", mixed, LK_QKV, 8, recipe_steps, batch_size=8),
        "hf_tuned": lambda: run_hf(glm, data, "hf_tuned", 16, 1, S(14), False, GLM_QKV, 8),
        "lk_packed": lk("lk_packed", mixed, LK_QKV, 8, S(12), pack_tokens=args.budget, profile_steps=2),
        "lk_packed_12k": lk("lk_packed_12k", mixed, LK_QKV, 8, S(14), pack_tokens=12288),
        "lk_packed_8k": lk("lk_packed_8k", mixed, LK_QKV, 8, S(20), pack_tokens=8192),
        "lk_packed_eager": lk(
            "lk_packed_eager", mixed, LK_QKV, 8, S(8), pack_tokens=args.budget, compile=False
        ),
        "lk_packed_peft": lk(
            "lk_packed_peft", mixed, LK_QKV, 8, S(8), pack_tokens=args.budget, fused_lora=False
        ),
        "lk_packed_flex": lk(
            "lk_packed_flex", mixed, LK_QKV, 8, S(8), pack_tokens=args.budget, attention="flex"
        ),
        "hf_8k": lambda: run_hf(glm, data8k, "hf_8k", 1, 2, S(8), True, GLM_QKV, 8, warm=3),
        "lk_lowmem": lk("lk_lowmem", fixed, LK_QKV, 8, S(8), checkpointing="low_memory"),
        "lk_lowmem_attn": lk(
            "lk_lowmem_attn",
            fixed,
            LK_QKV,
            8,
            S(8),
            checkpointing="low_memory",
            fast={"checkpoint_attention": True},
        ),
        "hf_alllinear16": lambda: run_hf(glm, data, "hf_alllinear16", 16, 1, S(12), False, GLM_ALL, 16),
        "lk_alllinear16": lk("lk_alllinear16", mixed, LK_ALL, 16, S(10), pack_tokens=12288),
    }
    results["runs"] = {}
    for v in variants:
        t1 = time.perf_counter()
        try:
            res = runs[v]()
        except torch.OutOfMemoryError as e:
            res = {"variant": v, "error": f"OOM: {str(e)[:200]}"}
        except Exception as e:  # keep the other variants' numbers
            import traceback

            traceback.print_exc()
            res = {"variant": v, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        res["wall_s"] = round(time.perf_counter() - t1, 1)
        results["runs"][v] = res
        log("RESULT", json.dumps(res))
        save()
        fresh_memory()
    report(results)
    save()
    shutil.rmtree(WORK, ignore_errors=True)


def report(results):
    runs = results["runs"]
    ref = runs.get("hf_recipe", {}).get("real_tok_s")
    tuned = runs.get("hf_tuned", {}).get("real_tok_s")
    lines = [
        f"card: {results['device']}  torch {results['torch']}  layers {results['layers']}",
        f"{'variant':16} {'tok/s':>7} {'MFU':>6} {'pad_eff':>7} {'GiB':>6} {'x recipe':>8} {'x tuned':>7}",
    ]
    for v, r in runs.items():
        if "error" in r:
            lines.append(f"{v:16} ERROR {r['error'][:90]}")
            continue
        x1 = f"{r['real_tok_s'] / ref:.2f}" if ref else "-"
        x2 = f"{r['real_tok_s'] / tuned:.2f}" if tuned else "-"
        lines.append(
            f"{v:16} {r['real_tok_s']:7d} {100 * r['mfu_h200']:5.1f}% {r['pad_efficiency']:7.2f} "
            f"{r['peak_mem_gib']:6.2f} {x1:>8} {x2:>7}"
        )
    a, b = runs.get("hf_recipe", {}).get("losses"), runs.get("lk_recipe", {}).get("losses")
    if a and b:
        dev = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=False))
        lines.append(
            f"loss parity hf_recipe vs lk_recipe, {min(len(a), len(b))} steps: max rel diff {dev:.2e}"
        )
        lines.append("  hf " + " ".join(f"{x:.4f}" for x in a))
        lines.append("  lk " + " ".join(f"{x:.4f}" for x in b))
        results["loss_parity_max_rel"] = dev
    prof = runs.get("lk_packed", {}).get("profile")
    if prof:
        lines.append("lk_packed profile ms/step: " + json.dumps(prof["categories_ms_per_step"]))
        lines.append(f"  GEMM rate on 4N FLOPs: {prof['gemm_tflops_on_4N']} TFLOP/s")
        for name, ms, cat in prof["top_kernels_ms_per_step"][:8]:
            lines.append(f"  {ms:8.2f} ms  {cat:12.12} {name[:80]}")
    text = "\n".join(lines)
    results["table"] = text
    print(text, flush=True)


if __name__ == "__main__":
    main()
