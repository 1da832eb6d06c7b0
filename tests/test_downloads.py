"""Downloads over real HTTP on the loopback interface: the face model (resumed, checked) and
the LIA-X weights when the hub cannot be reached."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from liveanim.errors import CheckpointError, WeightsDownloadError
from liveanim.face import FACE_LANDMARKER, FACE_MODEL_ENV, resolve_face_model
from liveanim.face import model as face_model
from liveanim.weights.fetch import FetchConfig, fetch

from tests.conftest import FACE_MODEL, REPO

QUIET = FetchConfig(progress=False, timeout=5)


@dataclasses.dataclass
class Behaviour:
    """What the test server does: serve `payload`, honour Range unless told not to, and cut the
    first `cut_requests` responses off after `cut_at` bytes (the connection drops)."""

    payload: bytes
    status: int = 200
    honour_range: bool = True
    cut_at: int = 0
    cut_requests: int = 0
    ranges: list[str | None] = dataclasses.field(default_factory=list)
    bytes_sent: int = 0


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        behaviour.ranges.append(requested)
        if behaviour.status != 200:
            self.send_error(behaviour.status)
            return
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested and behaviour.honour_range else 0
        body = behaviour.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(behaviour.payload) - 1}/{len(behaviour.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour.cut_requests > 0:
            behaviour.cut_requests -= 1
            body = body[: behaviour.cut_at]
            self.close_connection = True
        self.wfile.write(body)
        behaviour.bytes_sent += len(body)

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads the server's record instead."""


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    """A real HTTP server on 127.0.0.1 serving the face model's bytes; (url, behaviour)."""
    behaviour = Behaviour(FACE_MODEL.read_bytes())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/face_landmarker.task", behaviour
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused, as when offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/face_landmarker.task"


def served(url: str) -> face_model.RemoteFile:
    return dataclasses.replace(FACE_LANDMARKER, url=url)


# --- the face model --------------------------------------------------------------------------


def test_first_use_downloads_the_face_model_into_the_cache(server, tmp_path, monkeypatch):
    url, behaviour = server
    monkeypatch.delenv(FACE_MODEL_ENV)
    monkeypatch.setattr(face_model, "FACE_LANDMARKER", served(url))
    path = resolve_face_model(cache_dir=tmp_path, fetch_config=QUIET)
    assert path == tmp_path / "face_landmarker.task"
    assert path.read_bytes() == behaviour.payload and not (tmp_path / "face_landmarker.task.part").exists()
    assert resolve_face_model(cache_dir=tmp_path) == path and len(behaviour.ranges) == 1, "fetched once"


def test_the_detector_downloads_its_model_on_first_use_with_progress_shown(server, tmp_path):
    """The download happens before mediapipe starts (while it does, the console is muted), so a
    person sees the message and the progress bar."""
    url, behaviour = server
    script = (
        "import dataclasses, logging, sys\n"
        "from skimage import data\n"
        "from liveanim.face import FaceDetector, model\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"model.FACE_LANDMARKER = dataclasses.replace(model.FACE_LANDMARKER, url={url!r})\n"
        "with FaceDetector() as detector:\n"
        "    sys.exit(detector.detect(data.astronaut()) is None)\n"
    )
    env = {**os.environ, "LIVEANIM_CACHE": str(tmp_path)}
    del env[FACE_MODEL_ENV]
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "face_landmarker.task").read_bytes() == behaviour.payload
    assert "Downloading the face model" in run.stderr and "face_landmarker.task:" in run.stderr  # the bar


def test_a_dropped_connection_is_resumed_and_logged_once(server, tmp_path, caplog):
    url, behaviour = server
    behaviour.cut_at, behaviour.cut_requests = 1_000_000, 1
    with caplog.at_level(logging.INFO):
        path = fetch(served(url), tmp_path, QUIET)
    assert path.read_bytes() == behaviour.payload
    assert behaviour.ranges == [None, "bytes=1000000-"]
    assert behaviour.bytes_sent == len(behaviour.payload), "nothing was sent twice"
    retries = [record.getMessage() for record in caplog.records if "broke off" in record.getMessage()]
    assert len(retries) == 1 and "resuming at 1.0 MB (retry 1 of 3)" in retries[0]


def test_a_partial_file_from_an_earlier_run_is_completed(server, tmp_path):
    url, behaviour = server
    (tmp_path / "face_landmarker.task.part").write_bytes(behaviour.payload[:2_000_000])
    path = fetch(served(url), tmp_path, QUIET)
    assert path.read_bytes() == behaviour.payload
    assert behaviour.ranges == ["bytes=2000000-"] and behaviour.bytes_sent == len(behaviour.payload) - 2_000_000


def test_a_server_that_ignores_ranges_sends_the_whole_file_again(server, tmp_path):
    url, behaviour = server
    behaviour.honour_range = False
    (tmp_path / "face_landmarker.task.part").write_bytes(behaviour.payload[:2_000_000])
    assert fetch(served(url), tmp_path, QUIET).read_bytes() == behaviour.payload


def test_a_connection_that_keeps_dropping_gives_up_with_instructions(server, tmp_path):
    url, behaviour = server
    behaviour.cut_at, behaviour.cut_requests = 10, 100
    with pytest.raises(WeightsDownloadError, match="kept breaking off") as error:
        fetch(served(url), tmp_path, QUIET)
    assert len(behaviour.ranges) == 1 + QUIET.retries
    assert str(tmp_path / "face_landmarker.task") in str(error.value)


def test_a_wrong_file_fails_its_checksum_and_is_not_kept(server, tmp_path):
    url, behaviour = server
    behaviour.payload = behaviour.payload[::-1]
    with pytest.raises(WeightsDownloadError, match="SHA-256") as error:
        fetch(served(url), tmp_path, QUIET)
    assert FACE_LANDMARKER.sha256 in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_on_the_server_says_so(server, tmp_path):
    url, behaviour = server
    behaviour.status = 404
    with pytest.raises(WeightsDownloadError, match="the server answered 404"):
        fetch(served(url), tmp_path, QUIET)


def test_offline_fails_at_once_and_says_where_to_put_the_file(tmp_path, caplog):
    url = closed_port_url()
    with caplog.at_level(logging.INFO), pytest.raises(WeightsDownloadError) as error:
        fetch(served(url), tmp_path, QUIET)
    message = str(error.value)
    assert "127.0.0.1" in message and "could not be reached" in message and "offline" in message
    assert f"Download {url}" in message and f"save it as {tmp_path / 'face_landmarker.task'}" in message
    assert "--face-model PATH" in message and FACE_MODEL_ENV in message
    assert not any("retry" in record.getMessage() for record in caplog.records)


def test_a_hand_placed_file_that_is_not_the_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(FACE_MODEL_ENV)
    (tmp_path / "face_landmarker.task").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="is not the face model") as error:
        resolve_face_model(cache_dir=tmp_path, download=False)
    assert str(tmp_path / "face_landmarker.task") in str(error.value)


def test_the_path_given_wins_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(FACE_MODEL_ENV, str(tmp_path / "from-env.task"))
    with pytest.raises(CheckpointError, match="from-env.task does not exist"):
        resolve_face_model(cache_dir=tmp_path)
    assert resolve_face_model(FACE_MODEL, cache_dir=tmp_path) == FACE_MODEL


def test_no_model_and_no_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(FACE_MODEL_ENV)
    with pytest.raises(CheckpointError, match="downloading is turned off") as error:
        resolve_face_model(cache_dir=tmp_path, download=False)
    assert FACE_LANDMARKER.url in str(error.value) and str(tmp_path / "face_landmarker.task") in str(error.value)


# --- the LIA-X weights -----------------------------------------------------------------------


def test_weights_offline_fail_at_once_with_each_line_once(tmp_path):
    """With the hub unreachable, `weights` stops after one attempt (it used to retry for 23-30 s)
    and prints every line once (the hub library's lines came twice)."""
    hub = closed_port_url().rsplit("/", 1)[0]
    env = {**os.environ, "HF_ENDPOINT": hub, "LIVEANIM_CACHE": str(tmp_path), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    run = subprocess.run([sys.executable, "main.py", "weights"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    lines = [line.split(": ", 1)[-1] for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2
    assert "Could not download the LIA-X weights" in run.stderr and str(tmp_path / "lia-x.pt") in run.stderr
    assert not any("Retrying" in line for line in lines), run.stderr
    assert len(lines) == len(set(lines)), run.stderr
