"""Download one model file over HTTP(S): resumable, checksum-verified, with a progress bar.

The file grows in `<name>.part` beside its destination and is renamed only once its SHA-256
matches, so the destination is either absent or complete. A connection that drops mid-file
is resumed with an HTTP Range request; a server that cannot be reached at all (no network,
no DNS, refused) fails at once: retrying would only make a person wait for the same message.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import certifi
from tqdm import tqdm

from liveanim.errors import CheckpointError, WeightsDownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file fetched once into the cache folder.

    url:      where it is downloaded from.
    filename: its name in the cache folder.
    sha256:   hex digest of the complete file.
    size:     bytes of the complete file.
    what:     how messages name it (e.g. "the face model").
    option:   the command-line option that points at a local copy instead.
    """

    url: str
    filename: str
    sha256: str
    size: int
    what: str
    option: str

    def manual_instructions(self, cache_dir: Path) -> str:
        """The sentence that tells a person how to install the file by hand."""
        return (f"Download {self.url} ({self.size / 1e6:.1f} MB) and save it as {cache_dir / self.filename}, "
                f"or pass its location with {self.option}.")


@dataclass(frozen=True)
class FetchConfig:
    """How hard a download tries.

    retries:  how many times a transfer that broke off mid-file is resumed.
    timeout:  seconds to wait for the server to connect or to send more bytes.
    progress: show a progress bar on stderr.
    """

    retries: int = 3
    timeout: float = 30.0
    progress: bool = True


class _BrokenOff(Exception):
    """The transfer stopped before the end of the file; the partial file is kept."""


def fetch(remote: RemoteFile, cache_dir: Path, config: FetchConfig = FetchConfig()) -> Path:
    """Download `remote` into `cache_dir` (resuming an earlier partial file) and return its path."""
    dest = cache_dir / remote.filename
    partial = dest.with_name(dest.name + ".part")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsDownloadError(_failure(remote, cache_dir, f"{cache_dir} cannot be created ({error})")) from error
    log.info("Downloading %s (%.1f MB, once) from %s", remote.what, remote.size / 1e6, remote.url)
    for attempt in range(1, config.retries + 2):
        try:
            _transfer(remote, partial, config)
            break
        except _BrokenOff as error:
            if attempt > config.retries:
                raise WeightsDownloadError(_failure(remote, cache_dir, f"the transfer kept breaking off ({error})"))
            log.warning("Download of %s broke off (%s); resuming at %.1f MB (retry %d of %d)", remote.what, error,
                        _size(partial) / 1e6, attempt, config.retries)
    digest = sha256_of(partial)
    if digest != remote.sha256:
        partial.unlink()
        raise WeightsDownloadError(_failure(
            remote, cache_dir, f"the downloaded file's SHA-256 is {digest}, not {remote.sha256} (it was deleted)"))
    partial.replace(dest)
    log.info("Saved %s to %s", remote.what, dest)
    return dest


def check_sha256(path: Path, remote: RemoteFile) -> None:
    """Refuse a cached file that is not the expected one (e.g. a truncated copy placed by hand)."""
    digest = sha256_of(path)
    if digest != remote.sha256:
        raise CheckpointError(
            f"{path} is not {remote.what}: its SHA-256 is {digest}, not {remote.sha256}. "
            f"Delete it to download it again. {remote.manual_instructions(path.parent)}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _transfer(remote: RemoteFile, partial: Path, config: FetchConfig) -> None:
    """Append the rest of the file to `partial`; _BrokenOff if it stops early."""
    offset = _size(partial)
    if offset >= remote.size:  # complete (checked by the caller) or longer than the file: start over
        if offset == remote.size:
            return
        partial.unlink()
        offset = 0
    request = urllib.request.Request(remote.url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=config.timeout, context=_tls())
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the server's file is shorter than what we hold: start over
            partial.unlink()
            raise _BrokenOff("the partial file did not match the server's") from error
        raise WeightsDownloadError(_failure(remote, partial.parent, f"the server answered {error.code} {error.reason}"))
    except (urllib.error.URLError, OSError) as error:
        raise WeightsDownloadError(_failure(remote, partial.parent, f"{_host(remote.url)} could not be reached "
                                                                    f"({_reason(error)}); are you offline?")) from error
    with response:
        if offset and response.status != 206:  # the server ignored the Range header: the whole file comes
            offset = 0
        _copy(response, partial, offset, remote, config)
    if _size(partial) < remote.size:
        raise _BrokenOff(f"the connection closed at {_size(partial)} of {remote.size} bytes")


def _copy(response: http.client.HTTPResponse, partial: Path, offset: int, remote: RemoteFile,
          config: FetchConfig) -> None:
    with partial.open("ab" if offset else "wb") as out, tqdm(
        total=remote.size, initial=offset, unit="B", unit_scale=True, desc=remote.filename,
        disable=not config.progress, leave=False,
    ) as bar:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise _BrokenOff(_reason(error)) from error
            if not block:
                return
            try:
                out.write(block)
            except OSError as error:
                why = f"the disk holding {partial.parent} is full" if error.errno == errno.ENOSPC else str(error)
                raise WeightsDownloadError(_failure(remote, partial.parent, why)) from error
            bar.update(len(block))


def _failure(remote: RemoteFile, cache_dir: Path, why: str) -> str:
    return f"Could not download {remote.what}: {why}.\n{remote.manual_instructions(cache_dir)}"


def _tls() -> ssl.SSLContext:
    """The system's certificates and certifi's (python.org builds on macOS ship none of their own)."""
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    return context


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    text = str(reason).strip()
    return text or type(reason).__name__
