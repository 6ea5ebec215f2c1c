"""The pieces of bench/e2e_gpu.sh that are not shell: a ChatGLM3-6B-shaped random checkpoint in the official
safetensors-shard layout, a huanhuan-shaped dataset, the run configs, and the summary table.

    python3 bench/e2e_make.py checkpoint --tokenizer DIR --out DIR [--shape 6b|tiny] [--device cuda]
    python3 bench/e2e_make.py dataset --tokenizer DIR --out FILE [--records 3729]
    python3 bench/e2e_make.py configs --work DIR --model DIR --data FILE [--steps 40] [--gpus 2]
    python3 bench/e2e_make.py resume-compare --work DIR --killed-at N [--ref recipe] [--run resume]
    python3 bench/e2e_make.py report --work DIR --logs DIR --runs recipe,pack

checkpoint: config.json as shared/design/CHATGLM3.md (the official one when the tokenizer folder has it),
every tensor under its official name and shape in float16 (the config's torch_dtype), N(0, 0.02) matrices,
RMSNorm weights 1, the q|k|v bias N(0, 0.02), `transformer.rotary_pos_emb.inv_freq` as the official files
carry it; 7 shards `model-0000K-of-00007.safetensors` and `model.safetensors.index.json`; the tokenizer files
copied in. Written shard by shard from tensors drawn on the device (12.5 GB for the 6B shape).

dataset: alpaca records {instruction, input, output} in Chinese, palace-drama style (our own phrases), with
total lengths through the ChatGLM3 template lognormal (median ≈ 253 tokens, σ 0.5): about 8% longer than 512
tokens and a p95 near 577 at max_length 1024, like huanhuan.json. Lengths are counted with the tokenizer's
own sentencepiece model.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
SHAPE_6B = {
    "num_layers": 28,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "multi_query_group_num": 2,
    "padded_vocab_size": 65024,
}
SHAPE_TINY = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "num_attention_heads": 4,
    "kv_channels": 16,
    "multi_query_group_num": 2,
}
N_SPECIAL = 9  # [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")


def say(*a) -> None:
    print("[e2e]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checkpoint


def chatglm3_config(tokenizer: Path, shape: str) -> dict:
    """config.json of THUDM/chatglm3-6b (the official file when the tokenizer folder has one), at `shape`."""
    official = tokenizer / "config.json"
    if official.is_file():
        config = json.loads(official.read_text(encoding="utf-8"))
    else:  # CHATGLM3.md's keys
        config = {
            "_name_or_path": "THUDM/chatglm3-6b",
            "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            "add_bias_linear": False,
            "add_qkv_bias": True,
            "apply_residual_connection_post_layernorm": False,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "layernorm_epsilon": 1e-05,
            "multi_query_attention": True,
            "original_rope": True,
            "post_layer_norm": True,
            "rmsnorm": True,
            "seq_length": 8192,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "eos_token_id": 2,
            "pad_token_id": 0,
            **SHAPE_6B,
        }
    if shape == "tiny":
        import sentencepiece

        pieces = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
        vocab = math.ceil((pieces.get_piece_size() + N_SPECIAL) / 64) * 64
        config.update(SHAPE_TINY, padded_vocab_size=vocab)
    return config


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official checkpoint, in its order, with its shape (CHATGLM3.md)."""
    h, f, v = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    q = config["num_attention_heads"] * config["kv_channels"]
    kv = config["multi_query_group_num"] * config["kv_channels"]
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.embedding.word_embeddings.weight": (v, h),
        "transformer.rotary_pos_emb.inv_freq": (config["kv_channels"] // 4,),
    }
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attention.query_key_value.weight"] = (q + 2 * kv, h)
        shapes[p + "self_attention.query_key_value.bias"] = (q + 2 * kv,)
        shapes[p + "self_attention.dense.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.dense_h_to_4h.weight"] = (2 * f, h)
        shapes[p + "mlp.dense_4h_to_h.weight"] = (h, f)
    shapes["transformer.encoder.final_layernorm.weight"] = (h,)
    shapes["transformer.output_layer.weight"] = (v, h)
    return shapes


def make_checkpoint(tokenizer: Path, out: Path, shape: str, device: str, shards: int, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    config = chatglm3_config(tokenizer, shape)
    stamp = json.dumps({"config": config, "seed": seed, "shards": shards}, sort_keys=True)
    if (out / ".e2e-stamp").is_file() and (out / ".e2e-stamp").read_text() == stamp:
        say(f"checkpoint {out} exists (same config and seed)")
        return
    t0 = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer / name, out / name)
    shapes = tensor_shapes(config)
    total = sum(math.prod(s) * 2 for s in shapes.values())
    per_shard = math.ceil(total / shards)
    gen = torch.Generator(device=device).manual_seed(seed)
    rot = config["kv_channels"] // 2
    weight_map, part, size, k = {}, {}, 0, 1
    names = list(shapes)

    def flush(k: int) -> None:
        file = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update((n, file) for n in part)

    for i, name in enumerate(names):
        s = shapes[name]
        if name.endswith("inv_freq"):
            t = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
        elif name.endswith("layernorm.weight"):
            t = torch.ones(s)
        else:
            t = torch.empty(s, dtype=torch.float16, device=device).normal_(0.0, 0.02, generator=gen)
        part[name] = t.to(torch.float16).cpu()
        size += math.prod(s) * 2
        if (size >= per_shard and k < shards) or i == len(names) - 1:
            flush(k)
            part, size, k = {}, 0, k + 1
    if k <= shards:  # the file names say "of-{shards}": that many must exist
        raise SystemExit(f"wrote {k - 1} shards, wanted {shards}: too few tensors for that many shards")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / ".e2e-stamp").write_text(stamp)
    took = time.monotonic() - t0
    say(f"checkpoint {out}: {len(shapes)} tensors, {total / 2**30:.2f} GiB in {shards} shards, {took:.0f} s")


# ---------------------------------------------------------------- dataset

PEOPLE = "皇上 皇后娘娘 太后 华妃 眉姐姐 安陵容 槿汐 浣碧 温太医 果郡王 敬妃 端妃".split()
PLACES = "碎玉轩 御花园 翊坤宫 养心殿 长街 倚梅园 景仁宫 甘露寺 太液池 圆明园".split()
THINGS = "一盏清茶 一枝红梅 那支步摇 这方绣帕 一碗燕窝 那封家书 一曲琵琶 几卷诗书 一对玉镯".split()
CLAUSES = [
    "臣妾不敢有半分怠慢",
    "这宫里的日子原本就难熬",
    "{p}待我一向宽厚",
    "今日在{l}遇见了{p}",
    "{p}赏了臣妾{t}",
    "夜深了，小主早些歇息吧",
    "此事还需从长计议",
    "妹妹的心意，姐姐都明白",
    "{l}的风景依旧，只是人心已变",
    "奴婢这就去回禀{p}",
    "{p}的话，臣妾句句记在心里",
    "宫中人多口杂，凡事都要小心",
    "若是旁人问起，只说是{p}的意思",
    "臣妾只愿家人平安，别无所求",
    "{t}虽小，却是一番心意",
    "春日里{l}的花开得正好",
    "{p}近来似乎心事重重",
    "凡事不可操之过急",
    "这一路走来，多亏有{p}照拂",
    "臣妾愚钝，还请{p}明示",
    "往后的路，还得咱们自己走",
    "人生在世，难得糊涂",
    "只怕{p}早已看穿了一切",
    "{l}里静悄悄的，连风声都听得见",
]
QUESTIONS = [
    "你是谁？",
    "今日过得可好？",
    "你觉得{p}为人如何？",
    "在{l}可曾遇见什么人？",
    "{p}送来的{t}，你打算如何处置？",
    "小主，{p}宣你过去，可要准备些什么？",
    "你最想念家中的什么？",
    "若是{p}怪罪下来，该怎么办？",
    "为何近来总是闷闷不乐？",
    "你怎么看待宫中的争斗？",
    "可否为我讲讲{l}的故事？",
    "{p}今日为何动了怒？",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(p=rng.choice(PEOPLE), l=rng.choice(PLACES), t=rng.choice(THINGS))


def make_dataset(tokenizer: Path, out: Path, records: int, seed: int = 0) -> None:
    """Alpaca records whose total length through the ChatGLM3 template is lognormal(5.536, 0.5) tokens."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    rng = random.Random(seed)
    system = len(sp.encode(SYSTEM))
    rows, totals = [], []
    for _ in range(records):
        instruction = _fill(rng.choice(QUESTIONS), rng)
        extra = _fill(rng.choice(CLAUSES), rng) if rng.random() < 0.05 else ""
        prompt = system + len(sp.encode(instruction + extra)) + 8  # [gMASK] sop, roles, newlines
        target = max(prompt + 4, round(math.exp(rng.gauss(5.536, 0.5))))
        parts: list[str] = []
        have = 0
        while prompt + have + 1 < target:  # + eos
            clause = _fill(rng.choice(CLAUSES), rng) + rng.choice(["，", "。", "！", "……"])
            parts.append(clause)
            have += max(1, len(sp.encode(clause)) - 1)
        output = "".join(parts).rstrip("，") or "是。"
        rows.append({"instruction": instruction, "input": extra, "output": output})
        totals.append(prompt + len(sp.encode(output)) + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    totals.sort()
    over = sum(1 for t in totals if t > 512) / len(totals)
    p95 = totals[int(0.95 * len(totals))]
    say(
        f"dataset {out}: {records} records, total tokens median {totals[len(totals) // 2]}, p95 {p95}, "
        f"{over:.1%} over 512 (sentencepiece counts, the template estimated)"
    )


# ---------------------------------------------------------------- configs


def write_configs(
    work: Path, model: Path, data: Path, steps: int, pack_steps: int, gpus: int, tiny: bool
) -> list[str]:
    """recipe.yaml (the Self-LLM recipe), pack.yaml (the same with train.pack_tokens: 8192), resume.yaml (the
    recipe with checkpoints, for the kill-and-resume stage) and, with gpus ≥ 2, pack2gpu.yaml (that on 2 GPUs,
    data parallel). JSON is YAML."""
    base = {
        "model": str(model),
        "output_dir": "runs",
        "data": {"train": str(data), "system": SYSTEM, "max_length": 512, "eval_split": 0.05},
        "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "targets": ["query_key_value"]},
        "train": {
            "batch_size": 4,
            "grad_accum": 2,
            "lr": 1e-4,
            "epochs": 3,
            "max_steps": steps,
            "precision": "bf16",
            "log_every": 10,
        },
        "samples": {"count": 2, "max_new_tokens": 16},
    }
    if tiny:  # the CPU dry run: fp32 (bf16 on a CPU is a doctor warning), and a tiny row
        base["train"]["precision"] = "fp32"
    runs = {"recipe": base}
    pack = json.loads(json.dumps(base))
    pack["train"].update(pack_tokens=1024 if tiny else 8192, max_steps=pack_steps)
    runs["pack"] = pack
    # The recipe again under another name, a checkpoint every quarter: the resume stage kills it (kill -9 of
    # the CLI and the engine) after the second checkpoint and resumes it; its numbers are compared with the
    # recipe's.
    resume = json.loads(json.dumps(base))
    resume["train"]["save_every"] = max(1, steps // 4)
    runs["resume"] = resume
    if gpus >= 2:
        two = json.loads(json.dumps(pack))
        two["train"]["devices"] = gpus
        runs[f"pack{gpus}gpu"] = two
    for name, config in runs.items():
        (work / f"{name}.yaml").write_text(json.dumps({"name": name, **config}, ensure_ascii=False, indent=1))
    return list(runs)


# ---------------------------------------------------------------- report


def _gib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**30:.2f}"


def _doctor(out: Path, name: str) -> dict:
    file = out / f"doctor-{name}.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _estimate(doctor: dict) -> float | None:
    import re

    for step in doctor.get("summary", {}).get("steps", []):
        if step.get("name") == "memory":
            m = re.search(r"peak ≈ ([\d.]+) (GiB|MiB)", step.get("summary", ""))
            if m:
                return float(m.group(1)) * (2**30 if m.group(2) == "GiB" else 2**20)
    return None


def report(work: Path, out: Path, names: list[str]) -> int:
    db = work / "runs" / "lorakit.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True) if db.is_file() else None
    rows, summary = [], {}
    for name in names:
        rc_file = out / f"train-{name}.rc"
        rc = rc_file.read_text().strip() if rc_file.is_file() else "not run"
        doctor = _doctor(out, name)
        d_file = out / f"doctor-{name}.rc"
        d_rc = d_file.read_text().strip() if d_file.is_file() else "—"
        est = _estimate(doctor)
        tok_s = peak = None
        errors: list[str] = []
        reload = outcome = ""
        if con is not None:
            run = con.execute("SELECT id, status, error FROM runs WHERE name=?", (name,)).fetchone()
            if run:
                rid = run[0]
                outcome = run[1] + (f" ({run[2]})" if run[2] else "")
                q = "SELECT step, tokens_per_s, memory_bytes FROM metrics WHERE run_id=? AND kind='train'"
                steps = con.execute(q + " ORDER BY step", (rid,)).fetchall()
                warm = [s[1] for s in steps if s[0] > 3 and s[1]] or [s[1] for s in steps if s[1]]
                tok_s = statistics.median(warm) if warm else None
                mem = [s[2] for s in steps if s[2]]
                peak = max(mem) if mem else None
                q = "SELECT code FROM findings WHERE run_id=? AND severity='error'"
                errors = [r[0] for r in con.execute(q, (rid,))]
                for (text,) in con.execute("SELECT json FROM events WHERE run_id=? AND type='log'", (rid,)):
                    msg = json.loads(text).get("message", "")
                    if msg.startswith("adapter reload check"):
                        reload = msg
        train_log = out / f"train-{name}.log"
        text = train_log.read_text(encoding="utf-8", errors="replace") if train_log.is_file() else ""
        smoke = "ok" if "smoke       ok" in text else ("SMOKE_FAILED" if "SMOKE_FAILED" in text else "—")
        doctor_errors = [f["code"] for f in doctor.get("findings", []) if f.get("severity") == "error"]
        doctor_info = [f["code"] for f in doctor.get("findings", []) if f.get("severity") != "error"]
        ratio = f"{est / peak:.2f}" if est and peak else "—"
        rows.append(
            (
                name,
                d_rc,
                smoke,
                rc,
                f"{tok_s:,.0f}" if tok_s else "—",
                _gib(peak),
                _gib(est),
                ratio,
                ",".join(dict.fromkeys(doctor_errors + errors)) or "none",
            )
        )
        summary[name] = {
            "doctor_rc": d_rc,
            "smoke": smoke,
            "train_rc": rc,
            "outcome": outcome,
            "tokens_per_s_median": tok_s,
            "peak_bytes": peak,
            "doctor_peak_estimate_bytes": est,
            "doctor_errors": doctor_errors,
            "doctor_other_findings": doctor_info,
            "run_errors": errors,
            "reload_check": reload,
        }
    head = ("run", "doctor rc", "smoke", "train rc", "tok/s", "peak GiB", "doctor GiB", "est/peak", "errors")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    print("\n".join(lines))
    for name in names:
        s = summary[name]
        print(f"{name}: {s['outcome'] or 'no run recorded'}")
        if s["reload_check"]:
            print(f"  {s['reload_check']}")
        if s["doctor_other_findings"]:
            print(f"  doctor warnings/info: {', '.join(s['doctor_other_findings'])}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


def resume_compare(work: Path, ref: str, resumed: str, killed_at: int) -> int:
    """The metrics of the run killed and resumed against those of the same recipe never interrupted, step by
    step (train: loss, lr, grad norm; eval: loss), split at the last checkpoint before the kill: the steps
    before it were trained by the first process (their differences are the GPU's run-to-run noise), those
    after it by the resumed one. Prints the table, then one line per quantity and the run's final status."""
    con = sqlite3.connect(f"file:{work / 'runs' / 'lorakit.db'}?mode=ro", uri=True)
    status = con.execute("SELECT status, error FROM runs WHERE name=?", (resumed,)).fetchone()

    def metrics(name: str) -> dict:
        q = (
            "SELECT m.kind, m.step, m.loss, m.lr, m.grad_norm FROM metrics m JOIN runs r ON r.id=m.run_id"
            " WHERE r.name=?"
        )
        return {(k, st): (lo, lr, g) for k, st, lo, lr, g in con.execute(q, (name,))}

    def rel(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else abs(x - y) / max(abs(x), 1e-12)

    a, b = metrics(ref), metrics(resumed)
    common = sorted(set(a) & set(b), key=lambda k: (k[0], k[1]))
    worst: dict[tuple[str, str], float] = {}
    print(f"{'kind':6} {'step':>4} {'loss ' + ref:>14} {'loss ' + resumed:>14} {'rel diff':>9}")
    for key in common:
        phase = "before" if key[1] <= killed_at else "after"
        for i, what in enumerate(("loss", "lr", "grad norm")):
            d = rel(a[key][i], b[key][i])
            if d is not None:
                name = (f"{key[0]} {what}", phase)
                worst[name] = max(worst.get(name, 0.0), d)
        d = rel(a[key][0], b[key][0])
        shown = "—" if d is None else f"{d:.2e}"
        print(f"{key[0]:6} {key[1]:>4} {a[key][0]!s:>14.14} {b[key][0]!s:>14.14} {shown:>9}")
    for what in sorted({w for w, _ in worst}):
        before, after = (worst.get((what, p)) for p in ("before", "after"))
        before_s, after_s = ("—" if x is None else f"{x:.2e}" for x in (before, after))
        print(
            f"  max relative difference of {what}: steps ≤ {killed_at} (before the kill, not resumed) "
            f"{before_s}; after the resume {after_s}"
        )
    missing = sorted(set(a) - set(b))
    state = (status[0] + (f" ({status[1]})" if status[1] else "")) if status else "not recorded"
    print(
        f"resume: run {resumed} {state}; {len(common)} metric rows compared with {ref} "
        f"(killed after step {killed_at}'s checkpoint); {len(missing)} of {ref}'s rows missing"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("--tokenizer", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--shape", choices=["6b", "tiny"], default="6b")
    c.add_argument("--device", default="cuda")
    c.add_argument("--shards", type=int, default=7)
    d = sub.add_parser("dataset")
    d.add_argument("--tokenizer", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--records", type=int, default=3729)
    g = sub.add_parser("configs")
    g.add_argument("--work", type=Path, required=True)
    g.add_argument("--model", type=Path, required=True)
    g.add_argument("--data", type=Path, required=True)
    g.add_argument("--steps", type=int, default=40)
    g.add_argument("--pack-steps", type=int, default=12)
    g.add_argument("--gpus", type=int, default=1)
    g.add_argument("--tiny", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--logs", type=Path, required=True)
    r.add_argument("--runs", required=True)
    rc = sub.add_parser("resume-compare")
    rc.add_argument("--work", type=Path, required=True)
    rc.add_argument("--ref", default="recipe")
    rc.add_argument("--run", default="resume")
    rc.add_argument("--killed-at", type=int, required=True, help="the last checkpoint's step before the kill")
    a = ap.parse_args()
    if a.what == "checkpoint":
        make_checkpoint(a.tokenizer, a.out, a.shape, a.device, a.shards)
    elif a.what == "dataset":
        make_dataset(a.tokenizer, a.out, a.records)
    elif a.what == "configs":
        print(" ".join(write_configs(a.work, a.model, a.data, a.steps, a.pack_steps, a.gpus, a.tiny)))
    elif a.what == "resume-compare":
        return resume_compare(a.work, a.ref, a.run, a.killed_at)
    else:
        return report(a.work, a.logs, a.runs.split(","))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
