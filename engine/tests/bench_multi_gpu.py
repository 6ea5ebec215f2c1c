"""Tokens/s per GPU, 1 process vs 2 processes (torchrun), through the real engine entry point.

Not a test (pytest does not collect it). On a machine with two GPUs, from the repo root:

    python3 engine/tests/bench_multi_gpu.py --out OUT_DIR

It builds a Llama-shaped model with random weights (1.1B parameters: hidden 2048, 22 layers, ffn 5632,
32 heads, 4 KV heads, vocab 32000; bf16) as a real checkpoint folder under /tmp, writes prepared data with the
product's format (prepared.write_prepared) for two workloads — `chat`: prompt 16–128 tokens + response
lognormal(4.2, 0.6), ≤ 512 (PERFORMANCE.md), and `fixed`: every sample 256 tokens, which isolates the cost of
data parallelism from padding — and trains each with `python -m lorakit_engine train` on one GPU and with
`python -m torch.distributed.run --standalone --nproc_per_node=2 -m lorakit_engine train` on two, the same
per-device batch (LoRA r8 on every linear layer, no checkpointing). The two single-GPU runs go side by side,
one per GPU; then the two-GPU runs, one after the other.

Real tokens/s = the real (non-padding) tokens of the timed steps (computed from the data and the engine's own
batch order) ÷ the wall time between their step events. `--smoke` runs a tiny model on the CPU (gloo).
`--shard` trains the 2-GPU runs with `train.shard: fsdp` (the base split over the GPUs, FSDP2) instead of a
whole copy on each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from prepared import make_plan, write_plan  # noqa: E402

from lorakit_engine.batches import Batches, deal  # noqa: E402
from lorakit_engine.data import Prepared, read_rows  # noqa: E402

SHAPE = {"hidden": 2048, "layers": 22, "ffn": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000}
SMOKE_SHAPE = {"hidden": 64, "layers": 2, "ffn": 128, "heads": 4, "kv_heads": 2, "vocab": 512}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16


def build_model(folder: Path, shape: dict, device: str) -> int:
    """A random-weight Llama checkpoint (config.json + safetensors); returns N, the matmul parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
        model.to(torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
        del model
    h, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["ffn"]
    return shape["layers"] * per_layer + h * shape["vocab"]


GLM6B = {  # ChatGLM3-6B: the native model and the fast path (packed rows, fused loss and LoRA)
    "num_layers": 28,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "multi_query_group_num": 2,
    "vocab": 65024,
}


def build_glm6b(folder: Path) -> int:
    """A random-weight ChatGLM3-6B-shaped checkpoint in the official layout (config.json with every key of
    the real one, bf16 safetensors made on the GPU); returns N (5.98e9 with the output layer)."""
    from fixtures.chatglm import config_json
    from safetensors.torch import save_file

    config = config_json(GLM6B["vocab"])
    config.update({k: v for k, v in GLM6B.items() if k != "vocab"}, torch_dtype="bfloat16")
    h, f, v = config["hidden_size"], config["ffn_hidden_size"], GLM6B["vocab"]
    qkv = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * config["kv_channels"]
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator(device="cuda").manual_seed(0)

        def rand(*shape, scale=None):
            x = torch.randn(shape, generator=gen, device="cuda")
            return (x * (scale if scale is not None else shape[-1] ** -0.5)).to(torch.bfloat16).cpu()

        tensors = {"transformer.embedding.word_embeddings.weight": rand(v, h, scale=1.0)}
        for n in range(config["num_layers"]):
            p = f"transformer.encoder.layers.{n}."
            tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
            tensors[p + "self_attention.query_key_value.weight"] = rand(qkv, h)
            tensors[p + "self_attention.query_key_value.bias"] = rand(qkv, scale=0.02)
            tensors[p + "self_attention.dense.weight"] = rand(h, h)
            tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
            tensors[p + "mlp.dense_h_to_4h.weight"] = rand(2 * f, h)
            tensors[p + "mlp.dense_4h_to_h.weight"] = rand(h, f)
        tensors["transformer.encoder.final_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        tensors["transformer.output_layer.weight"] = rand(v, h)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return 5_980_000_000


def workload(kind: str, n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "fixed":
            p, r = 64, 192
        else:
            p = int(rng.integers(16, 129))
            r = max(2, min(int(np.exp(rng.normal(4.2, 0.6))), 512 - p))
        ids = rng.integers(10, vocab, p + r).tolist()
        out.append((ids, [-100] * p + ids[p:]))
    return out


def plan_for(root: Path, model_dir: Path, samples, args, devices: int) -> Path:
    over = {
        "train.total_steps": args.steps + (2 if args.profile else 0),  # profiled after the timed steps
        "train.epochs": 1,
        "train.batch_size": args.batch,
        "train.grad_accum": args.accum,
        "train.lr": 1e-4,
        "train.warmup_steps": 0,
        "train.precision": "fp32" if args.smoke else "bf16",
        "train.device": "cpu" if args.smoke else "cuda",
        "train.devices": devices,
        "train.shard": "fsdp" if args.shard and devices > 1 else "none",
        "train.pack_tokens": args.pack_tokens,
        # the fast path where `lorakit train` takes it: the native ChatGLM3 on CUDA
        "train.fast_path": args.model == "glm6b" and not args.smoke,
        "profile": {"dir": str(args.out / "profile" / root.name), "first_step": args.steps + 1, "steps": 2}
        if args.profile
        else None,
        "train.log_every": 10,
        "train.keep_checkpoints": 1,
        "lora.targets": ["query_key_value"] if args.model == "glm6b" else TARGETS,
        "lora.alpha": 32 if args.model == "glm6b" else 16,
        "lora.dropout": 0.1,
        "samples.items": [],
        "samples.before": False,
    }
    if args.model == "glm6b":
        over.update({"model.family": "chatglm", "model.model_type": "chatglm"})
    return write_plan(root, make_plan(root, model_dir, train=samples, eval=False, **over))


def launch(plan: Path, devices: int, env: dict, out: Path, logs: Path, name: str, gpu: int | None = None):
    engine = ["-m", "lorakit_engine", "train", "--plan", str(plan)]
    if devices > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
        cmd += engine
    else:
        cmd = [sys.executable, *engine]
    env = dict(env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    events = open(out / f"events-{name}.jsonl", "w")
    log = open(logs / f"stderr-{name}.txt", "w")  # gathered into OUT/stderr.txt at the end
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=events, stderr=log), cmd


def measure(name: str, plan_path: Path, devices: int, args, n_params: int, out: Path) -> dict:
    plan = json.loads(plan_path.read_text())
    lines = (out / f"events-{name}.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines if x.startswith("{")]
    steps = {e["step"]: e for e in events if e["type"] == "step"}
    errors = [e for e in events if e["type"] == "error"]
    if errors or len(steps) < args.steps:
        return {"name": name, "failed": errors[0]["message"] if errors else f"{len(steps)} steps"}
    data = Prepared(plan_path.parent / plan["data"]["train"]["dir"])
    lengths = (data.offsets[1:] - data.offsets[:-1]).tolist()
    rows_file = plan["data"]["train"]["rows"]
    starts = read_rows(plan_path.parent / rows_file, data, args.pack_tokens) if rows_file else None
    rows = [range(a, b) for a, b in zip(starts, starts[1:], strict=False)] if starts else None
    order = Batches(data, args.batch, plan["train"]["seed"], 0, row_starts=starts).order(0)
    g = args.batch * devices

    def micro(i):
        if (
            args.pack_tokens
        ):  # one packed row per rank, each computed without padding: one "sample" of its size
            return [sum(lengths[j] for j in rows[r]) for r in order[i * devices : (i + 1) * devices]]
        return [lengths[j] for j in order[i * g : (i + 1) * g]]

    # Padded sizes (samples × longest) per rank and step: the ranks meet once a step, so the step waits for
    # the rank with the most padded tokens over its window. As dealt (data.deal), and as a plain slice would.
    real, padded, slowest, sliced = 0, 0, 0, 0
    for s in range(args.warm + 1, args.steps + 1):
        dealt, plain = np.zeros(devices), np.zeros(devices)
        for i in range((s - 1) * args.accum, s * args.accum):
            ls = micro(i)
            real += sum(ls)
            for r, part in enumerate(deal(ls, devices)):
                dealt[r] += len(part) * max((ls[k] for k in part), default=0)
            per_rank = 1 if args.pack_tokens else args.batch
            for r in range(devices):
                x = ls[r * per_rank : (r + 1) * per_rank]
                plain[r] += len(x) * max(x, default=0)
        padded += dealt.sum()
        slowest += dealt.max() * devices
        sliced += plain.max() * devices
    wall = steps[args.steps]["elapsed_s"] - steps[args.warm]["elapsed_s"]
    tps = real / wall
    return {
        "name": name,
        "devices": devices,
        "real_tokens_per_s": tps,
        "per_gpu": tps / devices,
        "step_ms": 1000 * wall / (args.steps - args.warm),
        "padding_eff": real / padded,
        "balance_dealt": padded / slowest,  # mean rank's padded size ÷ the largest one's (1 = no waiting)
        "balance_sliced": padded / sliced if devices > 1 else 1.0,
        "mfu": 4 * n_params * tps / (PEAK_FLOPS * devices),
        "peak_gib": max((e["memory_bytes"] or 0) for e in steps.values()) / 2**30,
        "loss_first": steps[1]["loss"],
        "loss_last": steps[args.steps]["loss"],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lorakit-mgpu"))
    ap.add_argument("--phase-s", type=float, default=110, help="time limit of each phase")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (gloo)")
    ap.add_argument("--model", choices=("llama1b", "glm6b"), default="llama1b")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler over the two steps after the timed ones, every run",
    )
    ap.add_argument("--shard", action="store_true", help="the 2-GPU runs shard the base (FSDP2)")
    ap.add_argument(
        "--pack-tokens",
        type=int,
        default=None,
        help="train.pack_tokens: rows of ≤ N tokens (counted as computed without padding: the fast path)",
    )
    ap.add_argument("--gpus", type=int, choices=(1, 2), default=2, help="1: only the single-GPU runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    env.update(
        {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    )
    env.setdefault("OMP_NUM_THREADS", "1" if args.smoke else "4")

    t0 = time.monotonic()
    model_dir = args.work / ("model" if args.model == "llama1b" else "glm6b")
    if args.model == "glm6b":
        shape = {**shape, "vocab": GLM6B["vocab"]}
        n_params = build_glm6b(model_dir)
    else:
        n_params = build_model(model_dir, shape, "cpu" if args.smoke else "cuda")
    print(f"model {shape} N={n_params / 1e9:.3f}e9 built in {time.monotonic() - t0:.0f}s", flush=True)
    if not args.smoke:
        print(
            f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
            f"nccl {torch.cuda.nccl.version()}",
            flush=True,
        )

    plans = {}
    for kind in ("chat", "fixed"):
        samples = workload(kind, args.samples, shape["vocab"])
        for devices in (1, 2)[: args.gpus]:
            name = f"{kind}-{devices}gpu"
            plans[name] = (plan_for(args.work / name, model_dir, samples, args, devices), devices)

    def phase(names_gpus):
        started = time.monotonic()
        procs = [
            (n, *launch(plans[n][0], plans[n][1], env, args.out, args.work, n, gpu)) for n, gpu in names_gpus
        ]
        for n, p, cmd in procs:
            try:
                rc = p.wait(timeout=max(1, args.phase_s - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "killed (--phase-s)"
            print(f"{n}: exit {rc} after {time.monotonic() - started:.0f}s: {' '.join(cmd[1:])}", flush=True)

    if args.gpus == 2:
        phase([("chat-1gpu", None if args.smoke else 0), ("fixed-1gpu", None if args.smoke else 1)])
        phase([("chat-2gpu", None)])
        phase([("fixed-2gpu", None)])
    else:  # one GPU: the two single-GPU runs one after the other
        phase([("chat-1gpu", None if args.smoke else 0)])
        phase([("fixed-1gpu", None if args.smoke else 0)])
    with open(args.out / "stderr.txt", "w") as f:
        for name in plans:
            f.write(f"==== {name}\n{(args.work / f'stderr-{name}.txt').read_text()}\n")

    results = [measure(n, p, d, args, n_params, args.out) for n, (p, d) in plans.items()]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    by = {r["name"]: r for r in results}
    lines = [
        f"per-device batch {args.batch} x accumulation {args.accum}"
        f"{', the 2-GPU runs sharded (FSDP2)' * args.shard}"
        f"{f', rows of ≤ {args.pack_tokens} tokens (train.pack_tokens)' if args.pack_tokens else ''}, "
        f"steps {args.warm + 1}-{args.steps} timed",
        "| workload | GPUs | real tokens/s | per GPU | per GPU vs 1 GPU | step ms | padding eff. "
        "| rank balance (dealt / sliced) | MFU (4N) | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['name']} | FAILED: {r['failed'][:200]} |")
            continue
        one = by.get(r["name"].replace("2gpu", "1gpu"), {})
        ratio = r["per_gpu"] / one["per_gpu"] if "per_gpu" in one else float("nan")
        lines.append(
            f"| {r['name'].split('-')[0]} | {r['devices']} | {r['real_tokens_per_s']:,.0f} "
            f"| {r['per_gpu']:,.0f} "
            f"| {ratio:.1%} | {r['step_ms']:.0f} | {r['padding_eff']:.2f} "
            f"| {r['balance_dealt']:.3f} / {r['balance_sliced']:.3f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} |"
        )
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(f"total {time.monotonic() - t0:.0f}s\n\n{table}", flush=True)
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
