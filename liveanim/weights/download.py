"""Find the LIA-X weights on this computer, or fetch them once from the Hugging Face Hub.

Lookup order when no path is given: a file placed by hand in the cache folder
(`lia-x.safetensors`, then `lia-x.pt`), the hub cache inside that folder, then a download.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HTTPError, XetDownloadError

from liveanim.errors import CheckpointError, Fix, WeightsDownloadError

log = logging.getLogger(__name__)

CACHE_ENV = "LIVEANIM_CACHE"
HUB_SUBDIR = "hub"
# What hf_hub_download raises when the hub, the network or the disk fails. HTTPError is the
# hub's transport base class: connection drops and timeouts mid-download escape as such.
HUB_FAILURES = (OSError, EntryNotFoundError, HTTPError, XetDownloadError)


@dataclass(frozen=True)
class HubFile:
    """Where the released weights live, and what they look like on disk.

    repo_id:      the Hugging Face repository.
    filename:     the file inside it, also the name we look for in the cache folder.
    approx_bytes: the size of the complete file, quoted when a file looks truncated.
    """

    repo_id: str = "YaohuiW/LIA-X"
    filename: str = "lia-x.pt"
    approx_bytes: int = 3_642_000_000

    @property
    def url(self) -> str:
        """The repository page a person can download the file from."""
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def hand_placed_names(self) -> tuple[str, ...]:
        """Names accepted in the cache folder, fastest to load first."""
        stem = Path(self.filename).stem
        return (f"{stem}.safetensors", self.filename)


LIAX_RELEASE = HubFile()


def default_cache_dir() -> Path:
    """The per-user cache folder: $LIVEANIM_CACHE, else the platform's usual place."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else home / "AppData" / "Local") / "LiveAnim"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "LiveAnim"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else home / ".cache") / "liveanim"


def _manual_instructions(cache_dir: Path, source: HubFile = LIAX_RELEASE) -> str:
    """The sentences that tell a person how to install the weights by hand."""
    return (
        f"Download {source.filename} from {source.url} (about {source.approx_bytes / 1e9:.1f} GB) "
        f"and save it as {cache_dir / source.filename}."
    )


def download_weights(cache_dir: Path | None = None, source: HubFile = LIAX_RELEASE) -> Path:
    """Fetch the weights into the hub cache (resumable, with a progress bar); return the file.

    One quick look-up first, without retries: when the hub cannot be reached at all (offline),
    the person learns it at once instead of after the hub library's retries. The hub
    library's own messages (e.g. a retry during the long transfer) go through our logging once.
    """
    cache_dir = cache_dir or default_cache_dir()
    _hub_messages_through_our_logging()
    log.info("Downloading %s from %s (about %.1f GB, once)", source.filename, source.url,
             source.approx_bytes / 1e9)
    try:
        huggingface_hub.get_hf_file_metadata(url=huggingface_hub.hf_hub_url(source.repo_id, source.filename))
        found = huggingface_hub.hf_hub_download(
            repo_id=source.repo_id, filename=source.filename, cache_dir=cache_dir / HUB_SUBDIR
        )
    except HUB_FAILURES as exc:
        raise WeightsDownloadError(_download_failure(exc, cache_dir, source), fix=Fix.WEIGHTS_FILE) from exc
    return Path(found)


def _hub_messages_through_our_logging() -> None:
    """The hub library prints its warnings with a handler of its own and passes them on to ours
    as well, so each retry would be printed twice: leave the printing to our handlers."""
    hub_logger = logging.getLogger(huggingface_hub.__name__)
    for handler in list(hub_logger.handlers):
        hub_logger.removeHandler(handler)
    hub_logger.propagate = True


def _download_failure(exc: BaseException, cache_dir: Path, source: HubFile) -> str:
    """Why the download failed, in one line, followed by the manual route."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        why = f"the disk holding {cache_dir} is full (the file needs {source.approx_bytes / 1e9:.1f} GB)"
    else:
        offline = " (offline mode is on: unset HF_HUB_OFFLINE)" if hub_constants.HF_HUB_OFFLINE else ""
        detail = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        why = f"the Hugging Face Hub could not be reached{offline}. Reason: {detail}"
    return f"Could not download the LIA-X weights: {why}.\n{_manual_instructions(cache_dir, source)}"


def find_cached_weights(cache_dir: Path, source: HubFile = LIAX_RELEASE) -> Path | None:
    """A complete weights file already on disk (placed by hand or downloaded), or None."""
    for name in source.hand_placed_names:
        candidate = cache_dir / name
        if candidate.is_file():
            return candidate
    cached = huggingface_hub.try_to_load_from_cache(
        repo_id=source.repo_id, filename=source.filename, cache_dir=cache_dir / HUB_SUBDIR
    )
    return Path(cached) if isinstance(cached, str) else None


def resolve_weights(
    path: Path | None, download: bool = True, *, cache_dir: Path | None = None
) -> Path:
    """The weights file to load: the explicit path, else the cached file, else a fresh download."""
    cache_dir = cache_dir or default_cache_dir()
    if path is not None:
        return _explicit_path(Path(path).expanduser(), cache_dir)
    found = find_cached_weights(cache_dir)
    if found is not None:
        log.debug("Using weights at %s", found)
        return found
    if not download:
        raise CheckpointError(
            f"No LIA-X weights found in {cache_dir} and downloading is turned off. "
            f"{_manual_instructions(cache_dir)}", fix=Fix.WEIGHTS_FILE
        )
    return download_weights(cache_dir)


def _explicit_path(path: Path, cache_dir: Path) -> Path:
    """A path the person named must be an existing file; say so plainly if it is not."""
    if path.is_dir():
        raise CheckpointError(
            f"The weights path {path} is a folder, not the file itself (e.g. {path / LIAX_RELEASE.filename}).",
            fix=Fix.WEIGHTS_FILE,
        )
    if not path.is_file():
        raise CheckpointError(
            f"The weights file {path} does not exist: check the path. Without one, LiveAnim uses "
            f"{cache_dir / LIAX_RELEASE.filename} (downloaded from {LIAX_RELEASE.url} on first use).",
            fix=Fix.WEIGHTS_FILE,
        )
    return path
