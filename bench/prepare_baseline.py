"""The Python side of bench/prepare-scale.ts: the same JSONL, the same ChatGLM3 tokenization, done with the
`sentencepiece` (C++) and `tokenizers` (Rust) libraries, so lorakit's figures have a yardstick on the same
machine.

  prepare   What `lorakit data` does to an alpaca JSONL, the way a careful Python script does it: read line
            by line, render each record with ChatGLM3's finetune_demo semantics ([gMASK] sop, per message
            <|role|> + encode(metadata + "\\n") + encode(content), eos; the loss mask shifted right by one;
            a `history` of [question, answer] pairs first; data.system as the system turn), cut at
            max_length, drop samples with nothing left to train, append ids and labels to spool files, write
            tokens.safetensors (input_ids, labels int32, offsets int64). `--procs N` spreads chunks of lines
            over N processes, results in order. Prints one JSON line: samples/s, tokens/s, and the sha256 of
            input_ids and labels, which equal lorakit's prepared data for the same file with eval_split 0.
  tokenize  The tokenizer alone on every text of the records (contents and "\\n"), best of 3:
            sentencepiece with 1 and 2 threads (and on the Chinese and the other texts apart), and
            `tokenizers` on a tokenizer.json made from the same tokenizer.model (transformers'
            generate_merges: the BPE merges in score order); the ids of both must be equal. One JSON line.

Runs with the engine's Python (`~/.cache/lorakit/python/<hash>/bin/python`), which has both libraries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from array import array
from multiprocessing import Pool
from pathlib import Path

SPECIALS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
IGNORE = -100


class Glm3:
    """ChatGLM3's tokenizer: the SentencePiece model (or the same as a tokenizer.json), specials after it."""

    def __init__(self, model: str, kind: str):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=model)
        n = self.sp.vocab_size()
        self.special = {t: n + i for i, t in enumerate(SPECIALS)}
        self.eos = self.sp.eos_id()
        if kind == "spm":
            self.encode = self.sp.encode
        else:
            tok = hf_tokenizer(model)
            self.encode = lambda text: tok.encode(text, add_special_tokens=False).ids


def hf_tokenizer(model: str):
    """A `tokenizers` BPE with the SentencePiece model's vocabulary, merges in score order, byte fallback."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import BPE
    from transformers.tokenization_utils_sentencepiece import generate_merges

    sp = spm.SentencePieceProcessor(model_file=model)
    scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, (p, _) in enumerate(scores)}
    tok = Tokenizer(
        BPE(vocab, generate_merges(vocab, scores), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return tok


def messages(rec: dict, system: str | None) -> list[tuple[str, str, bool]]:
    """An alpaca record as (role, content, learned) turns, as lorakit reads it."""
    out = []
    sys_text = rec.get("system") or system
    if sys_text:
        out.append(("system", sys_text, False))
    for q, a in rec.get("history") or []:
        out += [("user", q, False), ("assistant", a, True)]
    user = "\n".join(p for p in (rec["instruction"], rec.get("input") or "") if p)
    return [*out, ("user", user, False), ("assistant", rec["output"], True)]


def render(tok: Glm3, rec: dict, system: str | None, max_length: int) -> tuple[list[int], list[int]] | None:
    ids, mask = [tok.special["[gMASK]"], tok.special["sop"]], [False, False]
    for role, content, learned in messages(rec, system):
        new = [tok.special[f"<|{role}|>"], *tok.encode("\n"), *tok.encode(content)]
        ids += new
        mask += [learned] * len(new)
    ids.append(tok.eos)
    mask.append(False)
    labels = [IGNORE] + [i if m else IGNORE for i, m in zip(ids[1:], mask[:-1], strict=True)]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels):
        return None  # nothing left to train: dropped, as lorakit drops it
    return ids, labels


_TOK: Glm3 | None = None
_ARGS: dict = {}


def _init(model: str, kind: str, system: str | None, max_length: int) -> None:
    global _TOK
    _TOK = Glm3(model, kind)
    _ARGS.update(system=system, max_length=max_length)


def _chunk(lines: list[str]) -> tuple[bytes, bytes, list[int], int]:
    assert _TOK is not None
    ids, labels, lengths, dropped = array("i"), array("i"), [], 0
    for line in lines:
        r = render(_TOK, json.loads(line), _ARGS["system"], _ARGS["max_length"])
        if r is None:
            dropped += 1
            continue
        ids.extend(r[0])
        labels.extend(r[1])
        lengths.append(len(r[0]))
    return ids.tobytes(), labels.tobytes(), lengths, dropped


def _chunks(path: str, size: int):
    with open(path, encoding="utf-8") as f:
        lines = []
        for line in f:
            if line.strip():
                lines.append(line)
            if len(lines) == size:
                yield lines
                lines = []
        if lines:
            yield lines


def prepare(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(dir=out))
    h_ids, h_labels = hashlib.sha256(), hashlib.sha256()
    offsets = array("q", [0])
    samples = dropped = 0
    init = (a.model, a.tok, a.system, a.max_length)
    with open(spool / "ids", "wb") as f_ids, open(spool / "labels", "wb") as f_labels:

        def take(res: tuple[bytes, bytes, list[int], int]) -> None:
            nonlocal samples, dropped
            ids, labels, lengths, d = res
            f_ids.write(ids)
            f_labels.write(labels)
            h_ids.update(ids)
            h_labels.update(labels)
            for n in lengths:
                offsets.append(offsets[-1] + n)
            samples += len(lengths)
            dropped += d

        if a.procs > 1:
            with Pool(a.procs, initializer=_init, initargs=init) as pool:
                for res in pool.imap(_chunk, _chunks(a.data, 1000), chunksize=1):
                    take(res)
        else:
            _init(*init)
            for lines in _chunks(a.data, 1000):
                take(_chunk(lines))
    tokens = offsets[-1]
    header = {
        "offsets": {"dtype": "I64", "shape": [len(offsets)], "data_offsets": [0, 8 * len(offsets)]},
        "input_ids": {
            "dtype": "I32",
            "shape": [tokens],
            "data_offsets": [8 * len(offsets), 8 * len(offsets) + 4 * tokens],
        },
        "labels": {
            "dtype": "I32",
            "shape": [tokens],
            "data_offsets": [8 * len(offsets) + 4 * tokens, 8 * len(offsets) + 8 * tokens],
        },
    }
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(out / "tokens.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + offsets.tobytes())
        for name in ("ids", "labels"):
            with open(spool / name, "rb") as src:
                shutil.copyfileobj(src, f, 8 << 20)
    shutil.rmtree(spool)
    wall = time.perf_counter() - t0
    return {
        "mode": "prepare",
        "tokenizer": a.tok,
        "procs": a.procs,
        "samples": samples,
        "dropped": dropped,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "cpu_s_main": round(time.process_time() - c0, 2),
        "samples_per_s": round((samples + dropped) / wall),
        "tokens_per_s": round(tokens / wall),
        "input_ids_sha256": h_ids.hexdigest(),
        "labels_sha256": h_labels.hexdigest(),
    }


def texts_of(path: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            texts += [r["instruction"], r.get("input") or "", r["output"], "\n"]
            texts += [t for pair in r.get("history") or [] for t in pair]
    return [t for t in texts if t]


def split_lang(texts: list[str]) -> dict[str, list[str]]:
    """Chinese texts (any CJK character) and the others (English, and the "\\n" after each role)."""
    zh = [t for t in texts if any("\u4e00" <= c <= "\u9fff" for c in t)]
    en = [t for t in texts if not any("\u4e00" <= c <= "\u9fff" for c in t)]
    return {"zh": zh, "en": en}


def tokenize(a: argparse.Namespace) -> dict:
    import sentencepiece as spm

    texts = texts_of(a.data)
    sp = spm.SentencePieceProcessor(model_file=a.model)
    res: dict = {"mode": "tokenize", "texts": len(texts)}

    def timed(name: str, fn, reps: int = 3) -> list[list[int]]:
        """The best of `reps` runs (the least disturbed by the machine's other work)."""
        wall = cpu = float("inf")
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            ids = fn()
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        n = sum(len(x) for x in ids)
        res[name] = {
            "tokens": n,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "tokens_per_s": round(n / wall),
            "tokens_per_cpu_s": round(n / cpu),
        }
        return ids

    ref = timed("sentencepiece_1_thread", lambda: sp.encode(texts, num_threads=1))
    timed("sentencepiece_2_threads", lambda: sp.encode(texts, num_threads=2))
    for lang, part in split_lang(texts).items():
        timed(f"sentencepiece_1_thread_{lang}", lambda part=part: sp.encode(part, num_threads=1))
    tok = hf_tokenizer(a.model)
    if a.save_json:
        Path(a.save_json).mkdir(parents=True, exist_ok=True)
        tok.save(str(Path(a.save_json) / "tokenizer.json"))
    for threads in (1, 2):
        # The thread pool is sized once per process: each setting runs in its own process.
        if threads != a.hf_threads:
            continue
        hf = timed(
            f"tokenizers_{threads}_thread{'s' if threads > 1 else ''}",
            lambda: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
            reps=1,
        )
        res["tokenizers_same_ids"] = hf == ref
    res["sha256_ids"] = hashlib.sha256(json.dumps(ref).encode()).hexdigest()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["prepare", "tokenize"])
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True, help="ChatGLM3's tokenizer.model")
    p.add_argument("--out", default=tempfile.gettempdir())
    p.add_argument("--tok", choices=["spm", "hf"], default="spm")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--hf-threads", type=int, default=1, help="tokenize: RAYON_NUM_THREADS for tokenizers")
    p.add_argument("--save-json", default=None, help="tokenize: write the tokenizer.json into this folder")
    p.add_argument("--system", default=None)
    p.add_argument("--max-length", type=int, default=512)
    a = p.parse_args()
    if a.mode == "tokenize":
        os.environ["RAYON_NUM_THREADS"] = str(a.hf_threads)
    print(json.dumps(prepare(a) if a.mode == "prepare" else tokenize(a)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
