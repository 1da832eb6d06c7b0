"""The safetensors cache: a fast-loading copy of each .pt, keyed by what the file holds.

The first load of a .pt (3.6 GB of pickle) writes a safetensors copy, so that later loads
are memory-mapped and take seconds. A copy is named after a key of its source's content:
the size, the modification time and a digest of blocks sampled across the file (all of a
small file). A name alone is never enough: two different `tiny.pt` in two folders keep a
copy each, a file changed in place is converted again, and a file moved with its time kept
still finds its copy. Beside each copy a `.sources` file lists the paths it was made from,
so that when one of them changes, a copy no path needs any more is removed rather than left
to fill the disk.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from liveanim.files import write_atomically
from liveanim.weights.checkpoint import check_state, existing_size, read_state_dict
from liveanim.weights.download import default_cache_dir, resolve_weights

log = logging.getLogger(__name__)

CONVERTED_SUBDIR = "safetensors"
CACHE_KEY_CHARS = 16
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 64 * 1024
FREE_SPACE_MARGIN = 256 * 2**20
SOURCES_SUFFIX = ".sources"


def load_weights(
    path: Path | None = None, *, download: bool = True, cache_dir: Path | None = None
) -> dict[str, torch.Tensor]:
    """The LIA-X state dict: resolve the file, read it (through the safetensors cache for a .pt)."""
    cache_dir = cache_dir or default_cache_dir()
    found = resolve_weights(path, download, cache_dir=cache_dir)
    if found.suffix != ".safetensors":
        found = cached_safetensors(found, cache_dir / CONVERTED_SUBDIR)
    return read_state_dict(found)


def cached_safetensors(pt_path: Path, cache_dir: Path) -> Path:
    """The fast safetensors copy of a .pt, written on first use; the .pt itself if it cannot be."""
    pt_path = Path(pt_path)
    existing_size(pt_path)
    target = Path(cache_dir) / f"{pt_path.stem}-{content_key(pt_path)}.safetensors"
    source = str(pt_path.absolute())
    if target.is_file():
        _remember(target, source)
        return target
    state = read_state_dict(pt_path)
    check_state(state, source=pt_path)  # never spend gigabytes of cache on a file the model cannot use
    log.info("Converting %s to %s once; later loads take seconds", pt_path, target)
    if not _write_copy(state, target):
        return pt_path
    _remember(target, source)
    _forget(source, keep=target)
    _remove_unlisted_copies(pt_path.stem, keep=target)
    return target


def content_key(path: Path) -> str:
    """A cheap identity of a file's contents: its size, its modification time and a digest of
    SAMPLE_BLOCKS blocks spread evenly over it (1 MiB read, whatever the size)."""
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with path.open("rb") as file:
        for offset in _sample_offsets(stat.st_size):
            file.seek(offset)
            digest.update(file.read(SAMPLE_BYTES))
    return digest.hexdigest()[:CACHE_KEY_CHARS]


def _sample_offsets(size: int) -> list[int]:
    """Where the sampled blocks start: the whole file when it is small, else first to last."""
    if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
        return list(range(0, size, SAMPLE_BYTES))
    step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
    return [round(block * step) for block in range(SAMPLE_BLOCKS)]


def _write_copy(state: Mapping[str, torch.Tensor], target: Path) -> bool:
    """Write the safetensors copy whole or not at all: no reader ever sees half a cache file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _ensure_room(target.parent, sum(t.numel() * t.element_size() for t in state.values()))
        write_atomically(target, lambda partial: save_file({key: t.contiguous() for key, t in state.items()}, partial))
    except OSError as exc:
        log.warning(
            "Could not write the safetensors cache %s (%s); loading the .pt directly, which is "
            "slower. Free some disk space or set LIVEANIM_CACHE to a writable folder.", target, exc
        )
        return False
    return True


def _ensure_room(folder: Path, needed: int) -> None:
    """Fail before writing rather than fill the disk to the last byte."""
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_SPACE_MARGIN:
        raise OSError(errno.ENOSPC, f"needs {needed:,} bytes, {free:,} free")


def _sources_file(copy: Path) -> Path:
    return copy.with_suffix(SOURCES_SUFFIX)


def _sources(copy: Path) -> list[str]:
    """The paths a copy was made from, one per line of its `.sources` file."""
    try:
        return _sources_file(copy).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _remember(copy: Path, source: str) -> None:
    """List `source` beside `copy` (a read-only cache only loses the bookkeeping)."""
    listed = _sources(copy)
    if source not in listed:
        _write_sources(copy, [*listed, source])


def _write_sources(copy: Path, sources: list[str]) -> None:
    target = _sources_file(copy)
    try:
        write_atomically(target, "".join(f"{source}\n" for source in sources))
    except OSError as exc:
        log.debug("Could not update %s (%s)", target, exc)


def _forget(source: str, keep: Path) -> None:
    """`source` now has another copy: drop it from the other copies' lists, and remove a copy
    that no path lists any more."""
    for listing in keep.parent.glob(f"*{SOURCES_SUFFIX}"):
        copy = listing.with_suffix(".safetensors")
        listed = _sources(copy)
        if copy == keep or source not in listed:
            continue
        remaining = [path for path in listed if path != source]
        if remaining:
            _write_sources(copy, remaining)
        else:
            log.info("Removing stale cache %s", copy)
            copy.unlink(missing_ok=True)
            listing.unlink(missing_ok=True)


def _remove_unlisted_copies(stem: str, keep: Path) -> None:
    """Copies of this stem made before copies listed their sources: they cannot be told apart
    from the one just replaced, so they go, as they always did."""
    pattern = re.compile(rf"{re.escape(stem)}-[0-9a-f]{{{CACHE_KEY_CHARS}}}\.safetensors")
    for old in keep.parent.glob(f"{stem}-*.safetensors"):
        if old != keep and pattern.fullmatch(old.name) and not _sources_file(old).exists():
            log.info("Removing stale cache %s", old)
            old.unlink(missing_ok=True)
