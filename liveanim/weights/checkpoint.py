"""Read LIA-X weights safely and say clearly why a file cannot be used.

Weights come from safetensors or `torch.load(weights_only=True)`; a pickle that needs code
is refused. The first load of a .pt writes a safetensors copy to the cache, so later
loads are memory-mapped and take seconds instead of unpickling 3.6 GB.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from liveanim.errors import CheckpointError
from liveanim.weights.download import LIAX_RELEASE, default_cache_dir, resolve_weights

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
NESTED_KEYS = ("state_dict", "gen", "generator", "model")
WIDTH_KEY = "enc.enc_2r.block1.0.weight"
MOTION_KEY = "enc.enc_r2t.0.weight"
BASE_CHANNELS = 64
CONVERTED_SUBDIR = "safetensors"
CACHE_KEY_CHARS = 16
FREE_SPACE_MARGIN = 256 * 2**20
NAMES_SHOWN = 3
DETAIL_CHARS = 100

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Lookalike:
    """A model whose checkpoints get mistaken for LIA-X, recognised by its tensor names.

    description: what we tell the person the file looks like.
    markers:     substrings of tensor names; one hit is enough.
    shape:       when set, the marked tensor must also have this shape.
    """

    description: str
    markers: tuple[str, ...]
    shape: tuple[int, ...] | None = None

    def matches(self, shapes: Shapes) -> bool:
        """Whether any tensor carries a marker (with the right shape, when one is given)."""
        return any(
            marker in name and (self.shape is None or shape == self.shape)
            for name, shape in shapes.items()
            for marker in self.markers
        )


LOOKALIKES: tuple[Lookalike, ...] = (
    Lookalike("LIA v1 (256x256), the predecessor of LIA-X", ("direction.weight",), (512, 20)),
    Lookalike("LivePortrait", ("appearance_feature_extractor", "motion_extractor",
                               "warping_module", "spade_generator")),
    Lookalike("a part of LivePortrait or another face-vid2vid-style model",
              ("resblocks_3d", "dense_motion_network")),
)

FILE_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer, not the weights (the repository was "
                                 "cloned without git-lfs; run `git lfs pull` or download the file)"),
    (b"<!doctype html", "a web page saved instead of the file"),
    (b"<html", "a web page saved instead of the file"),
)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors or PyTorch file as float32 CPU tensors, never running code."""
    path = Path(path)
    size = _existing_size(path)
    try:
        raw = _read_safetensors(path, size) if path.suffix == ".safetensors" else _read_torch(path, size)
    except PermissionError as exc:
        raise CheckpointError(f"Cannot read {path}: {exc.strerror}. Make the file readable.") from exc
    return {name: _as_float32(tensor) for name, tensor in _unwrap(raw, path).items()}


def _existing_size(path: Path) -> int:
    """The size of a weights file, after checking that there is one to read."""
    if not path.is_file():
        raise CheckpointError(
            f"The weights file {path} does not exist. Check the path, or pass the file with "
            f"--weights PATH; the released file is {LIAX_RELEASE.filename} at {LIAX_RELEASE.url}."
        )
    size = path.stat().st_size
    if size == 0:
        raise _incomplete(path, size)
    return size


def _read_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    """A memory-mapped safetensors file; any format error means it is damaged."""
    try:
        return load_file(path, device="cpu")
    except SafetensorError as exc:
        raise _incomplete(path, size, str(exc)) from exc


def _read_torch(path: Path, size: int) -> object:
    """torch.load restricted to tensors and plain containers, memory-mapped when possible."""
    with path.open("rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if not head.startswith(ZIP_MAGIC) and head != LEGACY_TORCH_MAGIC:
        raise _not_a_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(ZIP_MAGIC))
    except pickle.UnpicklingError as exc:
        if WEIGHTS_ONLY_REFUSAL in str(exc):
            raise _needs_code(path, str(exc)) from exc
        raise _incomplete(path, size, str(exc)) from exc
    except Exception as exc:  # torch fails on damaged bytes with many types (RuntimeError, EOFError, ...)
        raise _incomplete(path, size, str(exc)) from exc


def _incomplete(path: Path, size: int, detail: str = "") -> CheckpointError:
    """A truncated or damaged file: usually an interrupted download or copy."""
    first_line = detail.strip().splitlines()[0] if detail.strip() else ""
    reason = f" ({first_line[:DETAIL_CHARS]})" if first_line else ""
    return CheckpointError(
        f"The weights file {path} is incomplete or corrupt{reason}. It has {size:,} bytes; the "
        f"released {LIAX_RELEASE.filename} has about {LIAX_RELEASE.approx_bytes / 1e9:.1f} GB. "
        f"Delete it and download it again from {LIAX_RELEASE.url}."
    )


def _not_a_checkpoint(path: Path) -> CheckpointError:
    """A file that is neither a PyTorch checkpoint nor safetensors, with a guess at what it is."""
    with path.open("rb") as f:
        head = f.read(64)
    what = next((hint for prefix, hint in FILE_HINTS if head.lstrip().lower().startswith(prefix)), None)
    if what is None and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        what = f"a text file starting with {head.decode('ascii')[:40]!r}"
    found = f": it is {what}" if what else ""
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint{found}. Pass the LIA-X weights "
        f"({LIAX_RELEASE.filename} from {LIAX_RELEASE.url}, or a .safetensors copy) with --weights PATH."
    )


def _needs_code(path: Path, detail: str) -> CheckpointError:
    """A pickle that would import and run code to load: we never do that."""
    needed = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
    what = f" (it needs {needed.group(1)})" if needed else ""
    return CheckpointError(
        f"{path} contains Python objects that run code when loaded{what}. LiveAnim refuses to run "
        f"code from a checkpoint, since a checkpoint can hide any program. Use the released "
        f"{LIAX_RELEASE.filename} from {LIAX_RELEASE.url} or a .safetensors file."
    )


def _unwrap(raw: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The flat {name: tensor} dict, also when a training script nested it under a common key."""
    if _is_tensor_dict(raw):
        return raw
    if isinstance(raw, Mapping):
        for key in NESTED_KEYS:
            if _is_tensor_dict(raw.get(key)):
                log.info("Using the state dict stored under %r in %s", key, path)
                return raw[key]
        found = f"a dict with keys {', '.join(map(repr, list(raw)[:5]))}"
    else:
        found = f"a {type(raw).__name__}"
    raise CheckpointError(
        f"{path} holds no state dict of tensors (found {found}). Pass the LIA-X weights "
        f"({LIAX_RELEASE.filename} from {LIAX_RELEASE.url}) with --weights PATH."
    )


def _is_tensor_dict(obj: object) -> bool:
    """A non-empty mapping of names to tensors, as a state dict is."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating tensors become float32 (a no-op, without a copy, when they already are)."""
    return tensor.float() if tensor.is_floating_point() else tensor


def check_layout(state: Mapping[str, torch.Tensor], expected: Shapes, *, source: Path | None = None) -> None:
    """Refuse a state dict whose names or shapes differ from the model's, saying what it is instead."""
    found = _shapes(state)
    wanted = {name: tuple(shape) for name, shape in expected.items()}
    if found != wanted:
        raise CheckpointError(_layout_mismatch(found, wanted, source))


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape, the part of a state dict that decides whether a model can load it."""
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _layout_mismatch(found: Shapes, wanted: Shapes, source: Path | None) -> str:
    """Expected vs found, with a few names and a guess at the model, as one message."""
    missing = [name for name in wanted if name not in found]
    unexpected = [name for name in found if name not in wanted]
    reshaped = [name for name in wanted if name in found and found[name] != wanted[name]]
    example = (reshaped + missing + list(wanted))[0]
    lines = [
        f"{source or 'The checkpoint'} is not an LIA-X checkpoint of the expected size.",
        f"Expected: {_describe_lia_x(wanted)}, {len(wanted)} tensors, "
        f"e.g. {example} {wanted[example]}.",
        f"Found: {len(found)} tensors; {_guess(found)}.",
    ]
    lines += [f"Missing, e.g.: {_few(missing)}."] if missing else []
    lines += [f"Unexpected, e.g.: {_few(unexpected)}."] if unexpected else []
    lines += [_wrong_shapes(reshaped, found, wanted)] if reshaped else []
    lines.append(f"Pass the released {LIAX_RELEASE.filename} ({LIAX_RELEASE.url}) with --weights PATH.")
    return "\n".join(lines)


def _wrong_shapes(names: list[str], found: Shapes, wanted: Shapes) -> str:
    """A few tensors whose shapes differ, found against expected."""
    shown = "; ".join(f"{name} is {found[name]}, expected {wanted[name]}" for name in names[:NAMES_SHOWN])
    return f"Wrong shapes, e.g.: {shown}{_more(names)}."


def _describe_lia_x(shapes: Shapes) -> str:
    """'LIA-X generator (width W, motion_dim M)', or just 'LIA-X generator' if W, M are unknown."""
    dims = _dims_from_shapes(shapes)
    return f"LIA-X generator (width {dims[0]}, motion_dim {dims[1]})" if dims else "LIA-X generator"


def _guess(found: Shapes) -> str:
    """What the tensors look like: LIA-X of another size, a known look-alike, or their first names."""
    if _dims_from_shapes(found):
        return f"it looks like an {_describe_lia_x(found)}"
    match = next((model for model in LOOKALIKES if model.matches(found)), None)
    if match:
        return f"it looks like {match.description}"
    return f"its first names are {_few(list(found))}" if found else "it is empty"


def _few(names: list[str]) -> str:
    """The first few names and how many more there are."""
    return ", ".join(names[:NAMES_SHOWN]) + _more(names)


def _more(names: list[str]) -> str:
    """' (and N more)' when a list is cut to its first few names."""
    return f" (and {len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else ""


def _dims_from_shapes(shapes: Shapes) -> tuple[float, int] | None:
    """(width, motion_dim) read off the first encoder conv and the motion head, if both exist."""
    if WIDTH_KEY not in shapes or MOTION_KEY not in shapes:
        return None
    return shapes[WIDTH_KEY][0] / BASE_CHANNELS, shapes[MOTION_KEY][0]


def infer_dims(state: Mapping[str, torch.Tensor], *, source: Path | None = None) -> tuple[float, int]:
    """(width, motion_dim) of the LIA-X generator these weights belong to."""
    shapes = _shapes(state)
    dims = _dims_from_shapes(shapes)
    if dims is None:
        raise CheckpointError(
            f"{source or 'The checkpoint'} does not look like LIA-X: it has no {WIDTH_KEY} or "
            f"{MOTION_KEY}. Found {len(shapes)} tensors; {_guess(shapes)}. Pass the released "
            f"{LIAX_RELEASE.filename} ({LIAX_RELEASE.url}) with --weights PATH."
        )
    return dims


def cached_safetensors(pt_path: Path, cache_dir: Path) -> Path:
    """The fast safetensors copy of a .pt, written on first use; the .pt itself if it cannot be."""
    pt_path = Path(pt_path)
    _existing_size(pt_path)
    target = Path(cache_dir) / f"{pt_path.stem}-{_cache_key(pt_path)}.safetensors"
    if target.is_file():
        return target
    state = read_state_dict(pt_path)
    infer_dims(state, source=pt_path)  # never spend gigabytes of cache on another model's file
    log.info("Converting %s to %s once; later loads take seconds", pt_path, target)
    if not _write_atomically(state, target):
        return pt_path
    _remove_stale_copies(target, pt_path.stem)
    return target


def _cache_key(path: Path) -> str:
    """A cheap identity of a file's contents: its size and modification time, hashed."""
    stat = path.stat()
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:CACHE_KEY_CHARS]


def _write_atomically(state: Mapping[str, torch.Tensor], target: Path) -> bool:
    """Write to a temp file then rename, so no reader ever sees half a cache file."""
    partial: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _ensure_room(target.parent, sum(t.numel() * t.element_size() for t in state.values()))
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".partial")
        os.close(handle)
        partial = Path(name)
        save_file({key: tensor.contiguous() for key, tensor in state.items()}, partial)
        os.replace(partial, target)
    except OSError as exc:
        log.warning(
            "Could not write the safetensors cache %s (%s); loading the .pt directly, which is "
            "slower. Free some disk space or set LIVEANIM_CACHE to a writable folder.", target, exc
        )
        return False
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    return True


def _ensure_room(folder: Path, needed: int) -> None:
    """Fail before writing rather than fill the disk to the last byte."""
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_SPACE_MARGIN:
        raise OSError(errno.ENOSPC, f"needs {needed:,} bytes, {free:,} free")


def _remove_stale_copies(target: Path, stem: str) -> None:
    """Delete copies made from older versions of the same file, so the cache does not grow."""
    pattern = re.compile(rf"{re.escape(stem)}-[0-9a-f]{{{CACHE_KEY_CHARS}}}\.safetensors")
    for old in target.parent.glob(f"{stem}-*.safetensors"):
        if old != target and pattern.fullmatch(old.name):
            log.info("Removing stale cache %s", old)
            old.unlink(missing_ok=True)


def load_weights(
    path: Path | None = None, *, download: bool = True, cache_dir: Path | None = None
) -> dict[str, torch.Tensor]:
    """The LIA-X state dict: resolve the file, read it (through the safetensors cache for a .pt)."""
    cache_dir = cache_dir or default_cache_dir()
    found = resolve_weights(path, download, cache_dir=cache_dir)
    if found.suffix != ".safetensors":
        found = cached_safetensors(found, cache_dir / CONVERTED_SUBDIR)
    return read_state_dict(found)
