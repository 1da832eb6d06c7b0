"""Read LIA-X weights safely and say clearly why a file cannot be used.

Weights come from safetensors or `torch.load(weights_only=True)`; a pickle that needs code
is refused. Before a model uses them, their names, shapes, types and values are checked
(`check_state`), and every message names the file. `liveanim.weights.cache` keeps the
fast-loading safetensors copy of a .pt.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from liveanim.errors import CheckpointError, Fix
from liveanim.model import LIAX
from liveanim.weights.download import LIAX_RELEASE

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
NESTED_KEYS = ("state_dict", "gen", "generator", "model")
MOTION_KEY = "enc.enc_r2t.0.weight"  # (motion_dim, latent_dim): the model's two dimensions
LATENT_PER_WIDTH = 512
LATENT_STEP = 8  # the first encoder stage has latent_dim / 8 channels, a whole number
MIN_LATENT = 64  # width 0.125, the narrowest model
NAMES_SHOWN = 3
USE_THE_RELEASE = f"Use the released {LIAX_RELEASE.filename} ({LIAX_RELEASE.url}) or a .safetensors copy of it."
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
    size = existing_size(path)
    try:
        raw = _read_safetensors(path, size) if path.suffix == ".safetensors" else _read_torch(path, size)
    except PermissionError as exc:
        raise CheckpointError(f"Cannot read {path}: {exc.strerror}. Make the file readable.") from exc
    return {name: _as_float32(tensor) for name, tensor in _unwrap(raw, path).items()}


def existing_size(path: Path) -> int:
    """The size of a weights file, after checking that there is one to read (else a CheckpointError)."""
    if not path.is_file():
        raise CheckpointError(
            f"The weights file {path} does not exist: check the path. The released file is "
            f"{LIAX_RELEASE.filename} at {LIAX_RELEASE.url}.", fix=Fix.WEIGHTS_FILE
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
    return CheckpointError(f"{path} is not a PyTorch checkpoint{found}. {USE_THE_RELEASE}", fix=Fix.WEIGHTS_FILE)


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
    raise CheckpointError(f"{path} holds no state dict of tensors (found {found}). {USE_THE_RELEASE}",
                          fix=Fix.WEIGHTS_FILE)


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
        raise CheckpointError(_layout_mismatch(found, wanted, source), fix=Fix.WEIGHTS_FILE)


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
    lines.append(USE_THE_RELEASE)
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
    """(width, motion_dim) read off the motion head (motion_dim, 512 * width), if it exists."""
    shape = shapes.get(MOTION_KEY)
    if shape is None or len(shape) != 2:
        return None
    return shape[1] / LATENT_PER_WIDTH, shape[0]


def infer_dims(state: Mapping[str, torch.Tensor], *, source: Path | None = None) -> tuple[float, int]:
    """(width, motion_dim) of the LIA-X generator these weights belong to."""
    shapes = _shapes(state)
    dims = _dims_from_shapes(shapes)
    if dims is None:
        raise CheckpointError(
            f"{source or 'The checkpoint'} does not look like LIA-X: it has no {MOTION_KEY} of two "
            f"dimensions. Found {len(shapes)} tensors; {_guess(shapes)}. {USE_THE_RELEASE}", fix=Fix.WEIGHTS_FILE
        )
    return dims


def check_state(state: Mapping[str, torch.Tensor], *, source: Path | None = None) -> tuple[float, int]:
    """(width, motion_dim) of a state dict that a model can use as it is: its names and shapes
    are those of the LIA-X model its motion head describes, every tensor holds floating-point
    numbers, and every number is finite. Anything else is a CheckpointError naming `source`.

    NaN or infinite weights would otherwise load and render black frames without a word.
    """
    width, motion_dim = infer_dims(state, source=source)
    check_layout(state, _expected_layout(width, motion_dim, source), source=source)
    _check_floating(state, source)
    _check_finite(state, source)
    return width, motion_dim


def _expected_layout(width: float, motion_dim: int, source: Path | None) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the LIA-X model of these dimensions, if there can be one."""
    latent = round(width * LATENT_PER_WIDTH)
    if latent < MIN_LATENT or latent % LATENT_STEP or motion_dim < 1:
        raise _no_such_model(source, (motion_dim, latent), f"it needs at least one direction and a latent "
                                                           f"size that is a multiple of {LATENT_STEP} from {MIN_LATENT}")
    try:
        return LIAX.expected_layout(width, motion_dim)
    except ValueError as error:  # e.g. channel counts that GroupNorm cannot divide into groups
        raise _no_such_model(source, (motion_dim, latent), str(error)) from None


def _no_such_model(source: Path | None, shape: tuple[int, int], why: str) -> CheckpointError:
    return CheckpointError(
        f"{source or 'The checkpoint'} is no LIA-X checkpoint: its {MOTION_KEY} has shape {shape}, "
        f"and no LIA-X model has that size ({why}). {USE_THE_RELEASE}", fix=Fix.WEIGHTS_FILE
    )


def _check_floating(state: Mapping[str, torch.Tensor], source: Path | None) -> None:
    """Weights are real numbers; integer or boolean tensors mean another program wrote the file."""
    wrong = [name for name, tensor in state.items() if not tensor.is_floating_point()]
    if wrong:
        raise CheckpointError(
            f"{source or 'The checkpoint'} holds tensors that are not floating point, e.g. {wrong[0]} of "
            f"type {state[wrong[0]].dtype}{_and_others(wrong)}; LIA-X weights are float32, float16 or bfloat16. "
            f"The file was changed by another program or is damaged. {USE_THE_RELEASE}", fix=Fix.WEIGHTS_FILE
        )


def _check_finite(state: Mapping[str, torch.Tensor], source: Path | None) -> None:
    """No NaN or infinity anywhere: one pass of min/max per tensor (they propagate both)."""
    broken = [name for name, tensor in state.items() if tensor.numel() and not _finite(tensor)]
    if broken:
        first = state[broken[0]]
        count = first.numel() - int(torch.isfinite(first).sum())
        raise CheckpointError(
            f"{source or 'The checkpoint'} holds NaN or infinite weights, e.g. {count:,} of the "
            f"{first.numel():,} values of {broken[0]}{_and_others(broken)}; a model with them renders black "
            f"frames. The file is damaged, or comes from a training run that diverged. {USE_THE_RELEASE}",
            fix=Fix.WEIGHTS_FILE,
        )


def _and_others(names: list[str]) -> str:
    """' (and N other tensors)' after the first of `names`."""
    return f" (and {len(names) - 1} other tensors)" if len(names) > 1 else ""


def _finite(tensor: torch.Tensor) -> bool:
    low, high = torch.aminmax(tensor.float() if tensor.dtype != torch.float32 else tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))
