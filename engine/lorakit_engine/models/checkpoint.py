"""Read a local checkpoint folder: `config.json` and the weight layouts of the hub (one file, or an index and
its shards; safetensors or PyTorch `.bin`), checked name by name and shape by shape against the model that
will hold them. Every problem is a MODEL_LOAD_FAILED EngineError that names the file and says what to do.

`.bin` files are read with `torch.load(weights_only=True)`: tensors only, no code. Nothing in the folder is
ever executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..protocol import EngineError

# Looked for in this order: safetensors before pickled .bin, the index before a single file.
LAYOUTS = (
    ("model.safetensors.index.json", True),
    ("model.safetensors", False),
    ("pytorch_model.bin.index.json", True),
    ("pytorch_model.bin", False),
)
_SHOWN = 5  # names listed in an error before "… and N more"


_HINT = "Point model at a complete local checkpoint folder (config.json and its weights)."


def load_error(message: str, path: Path | str | None = None, hint: str = _HINT) -> EngineError:
    """MODEL_LOAD_FAILED: a checkpoint lorakit cannot load, with the file (`path`) named in the message."""
    return EngineError("MODEL_LOAD_FAILED", message + (f" [{path}]" if path is not None else ""), hint)


def few(names, shown: int = _SHOWN) -> str:
    names = sorted(names)
    head = ", ".join(names[:shown])
    return head + (f" … and {len(names) - shown} more" if len(names) > shown else "")


def read_config(folder: Path | str) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise load_error(
            "no config.json in the model folder",
            Path(folder),
            hint="Point model at the folder that holds config.json and the weights.",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested beyond the parser
        raise load_error(f"config.json is not valid JSON: {e}", path=path) from e
    if not isinstance(config, dict):
        raise load_error("config.json is not a JSON object", path=path)
    return config


@dataclass
class WeightFiles:
    folder: Path
    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None  # tensor name -> shard file name, from the index


def find_weights(folder: Path | str) -> WeightFiles:
    """The weight files of a folder, with every shard an index names checked to exist."""
    folder = Path(folder)
    for name, is_index in LAYOUTS:
        path = folder / name
        if not path.is_file():
            continue
        if not is_index:
            return WeightFiles(folder, [path])
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            assert isinstance(weight_map, dict)
        except (ValueError, RecursionError, KeyError, TypeError, AssertionError) as e:
            raise load_error("the index has no valid `weight_map`", path=path) from e
        # Checked before dict.fromkeys, which cannot take a list or an object as a shard name.
        bad = [s for s in weight_map.values() if not isinstance(s, str) or Path(s).name != s]
        if bad:
            raise load_error(
                f"the index names shard files outside the folder: {few(map(repr, bad))}",
                path=path,
            )
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise load_error(
                f"{len(missing)} of {len(shards)} shard files named by {name} are missing: {few(missing)}",
                path=path,
                hint="The download is incomplete: fetch the missing shards into the same folder.",
            )
        return WeightFiles(folder, [folder / s for s in shards], path, weight_map)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise load_error(
        f"no weights found: expected one of {', '.join(n for n, _ in LAYOUTS)}; "
        f"the folder holds: {few(present) or 'nothing'}",
        path=folder,
    )


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one weight file, read lazily where the format allows. A file that cannot be read is
    MODEL_LOAD_FAILED naming it (safetensors and torch's unpickler each fail on a damaged file their own
    way)."""
    try:
        yield from _iter_tensors(path)
    except EngineError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise load_error(
            f"the weights cannot be read ({type(e).__name__}: {first[:300]})",
            path=path,
            hint="The file is damaged or incomplete (a Git LFS pointer is not the weights): fetch it again.",
        ) from e


def _iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files written before torch's zip format cannot be memory-mapped.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise load_error("the file does not hold a flat dict of tensors", path=path)
    yield from state.items()


def load_weights(
    model: nn.Module,
    weights: WeightFiles,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    ignore: Callable[[str], bool] = lambda name: False,
) -> None:
    """Fill every parameter of `model` (usually built on the meta device) from the files.

    Floating tensors are cast to `dtype`; every expected name must be found once with the expected shape, and
    no unknown name may appear (except those `ignore` accepts, such as recomputable buffers).
    """
    expected = dict(model.named_parameters())
    expected.update((n, b) for n, b in model.named_buffers() if _is_persistent(model, n))
    if weights.weight_map is not None:
        names = {n for n in weights.weight_map if not ignore(n)}
        _check_names(expected.keys() - names, "not in the index", weights.index)
        _check_names(names - expected.keys(), "in the index but not in the model", weights.index)
    loaded: set[str] = set()
    for path in weights.files:
        unexpected = []
        for name, tensor in iter_tensors(path):
            if ignore(name):
                continue
            target = expected.get(name)
            if target is None:
                unexpected.append(name)
                continue
            if tuple(tensor.shape) != tuple(target.shape):
                raise load_error(
                    f"tensor {name} has shape {list(tensor.shape)} in the file; "
                    f"config.json implies {list(target.shape)}",
                    path=path,
                    hint="Use a folder whose config.json and weights come from the same model.",
                )
            tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            _assign(model, name, tensor)
            loaded.add(name)
        _check_names(unexpected, "in the file but not in the model", path)
    missing = expected.keys() - loaded
    if missing:
        where = weights.files[0] if len(weights.files) == 1 else weights.index
        if weights.weight_map is not None:
            files = sorted({weights.weight_map[n] for n in missing if n in weights.weight_map})
            where = weights.folder / files[0] if len(files) == 1 else where
        _check_names(missing, "not found in the weights", where)


def _check_names(names, where: str, path: Path | None) -> None:
    if names:
        raise load_error(
            f"{len(names)} tensor name(s) {where}: {few(names)}",
            path=path,
            hint="Use config.json and weights of one model; download damaged files again.",
        )


def _is_persistent(model: nn.Module, name: str) -> bool:
    prefix, _, leaf = name.rpartition(".")
    return leaf not in model.get_submodule(prefix)._non_persistent_buffers_set


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    prefix, _, leaf = name.rpartition(".")
    module = model.get_submodule(prefix)
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    else:
        module._buffers[leaf] = tensor
