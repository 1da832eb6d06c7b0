"""What a person sees when the LIA-X weights are missing, broken, foreign, or fine.

Uses the golden width-0.5 state dict instead of the 3.6 GB release, and never the network.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    HTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    XetDownloadError,
)
from huggingface_hub.errors import Response  # the HTTP response type the hub's errors carry
from huggingface_hub.utils import get_session
from safetensors.torch import save_file

from liveanim.errors import CheckpointError, WeightsDownloadError
from liveanim.model import LIAX
from liveanim.weights import (
    cached_safetensors,
    check_layout,
    check_state,
    default_cache_dir,
    download_weights,
    infer_dims,
    load_weights,
    read_state_dict,
    resolve_weights,
)
from liveanim.model.seeded import seed_parameters_
from liveanim.weights import cache as cache_module

HUB_URL = "https://huggingface.co/YaohuiW/LIA-X"
REPO = Path(__file__).resolve().parents[1]
MARKED = "dec.direction.weight"  # a tensor the tests below change to tell files apart


class NotAllowedInCheckpoints:
    """A custom class: unpickling it would import and run this module's code."""


@pytest.fixture(scope="session")
def release_layout() -> dict[str, tuple[int, ...]]:
    return LIAX.expected_layout(2.0, 40)


@pytest.fixture(scope="session")
def small_layout() -> dict[str, tuple[int, ...]]:
    return LIAX.expected_layout(0.5, 40)


@pytest.fixture(scope="session")
def small_pt(tmp_path_factory: pytest.TempPathFactory, golden_state: dict[str, torch.Tensor]) -> Path:
    """The golden width-0.5 state dict (conftest), saved as a real .pt."""
    path = tmp_path_factory.mktemp("weights") / "lia-x.pt"
    torch.save(golden_state, path)
    return path


@pytest.fixture(scope="session")
def tiny_state() -> dict[str, torch.Tensor]:
    """A complete width-0.125 LIA-X state dict (14 MB), seeded."""
    model = seed_parameters_(LIAX(0.125), 0)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def save_tiny(path: Path, tiny_state: dict[str, torch.Tensor], fill: float | None = None) -> Path:
    """The tiny state dict saved as a .pt; `fill` sets every value of MARKED (same file size)."""
    state = dict(tiny_state)
    if fill is not None:
        state[MARKED] = torch.full_like(state[MARKED], fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder; nothing is written to the real one."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("LIVEANIM_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub library in offline mode, as with HF_HUB_OFFLINE=1 set before start-up."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's quick look-up before a download succeeds (the download itself is faked)."""
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url: None)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def lia_v1_like() -> dict[str, torch.Tensor]:
    """Names and shapes in the style of an LIA v1 training checkpoint, flattened under 'gen.'."""
    return {
        "gen.enc.net_app.convs.0.0.weight": torch.zeros(64, 3, 1, 1),
        "gen.enc.fc.0.weight": torch.zeros(512, 512),
        "gen.dec.direction.weight": torch.zeros(512, 20),
        "gen.dec.synthesis.conv1.conv.weight": torch.zeros(1, 512, 512, 3, 3),
    }


def live_portrait_like() -> dict[str, torch.Tensor]:
    return {
        "appearance_feature_extractor.conv_first.conv.weight": torch.zeros(64, 3, 7, 7),
        "motion_extractor.detector.stem.0.weight": torch.zeros(96, 3, 4, 4),
        "warping_module.dense_motion_network.compress.weight": torch.zeros(4, 4),
        "spade_generator.fc.weight": torch.zeros(512, 256, 3, 3),
    }


# --- where the weights are looked for --------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {}, "/home/ann/.cache/liveanim"),
        ("linux", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/liveanim"),
        ("darwin", {}, "/home/ann/Library/Caches/LiveAnim"),
        ("win32", {"LOCALAPPDATA": "/appdata/local"}, "/appdata/local/LiveAnim"),
        ("linux", {"LIVEANIM_CACHE": "/big/disk"}, "/big/disk"),
    ],
)
def test_cache_dir_follows_platform_and_override(monkeypatch, platform, env, expected):
    for name in ("LIVEANIM_CACHE", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", "/home/ann")
    monkeypatch.setattr(sys, "platform", platform)
    assert default_cache_dir() == Path(expected)


def test_offline_hub_says_where_to_put_the_file(tmp_path, offline):
    with pytest.raises(WeightsDownloadError) as err:
        resolve_weights(None, cache_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "lia-x.pt") in message
    assert "--weights PATH" in message
    assert HUB_URL in message
    assert "offline" in message


def hub_errors() -> list[Exception]:
    response = Response(503, request=get_session().build_request("HEAD", HUB_URL))
    return [
        LocalEntryNotFoundError("Cannot find the requested files in the local cache."),
        HfHubHTTPError("503 Service Unavailable", response=response),
        RepositoryNotFoundError("404 Repository Not Found", response=response),
        ConnectionError("[Errno -2] Name or service not known"),
        TimeoutError("timed out"),
        HTTPError("Server disconnected without sending a response."),
        XetDownloadError("Xet transfer failed"),
    ]


@pytest.mark.parametrize("error", hub_errors(), ids=lambda e: type(e).__name__)
def test_hub_failures_become_instructions(tmp_path, monkeypatch, error, hub_answers):
    def unreachable(**_: object) -> str:
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsDownloadError) as err:
        download_weights(tmp_path)
    message = str(err.value)
    assert "could not be reached" in message
    assert str(tmp_path / "lia-x.pt") in message and "--weights PATH" in message and HUB_URL in message
    assert str(error).splitlines()[0] in message


def test_full_disk_during_download_says_so(tmp_path, monkeypatch, hub_answers):
    def disk_full(**_: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", disk_full)
    with pytest.raises(WeightsDownloadError, match=r"disk holding .* is full.*3.6 GB[\s\S]*--weights PATH"):
        download_weights(tmp_path)


def test_download_goes_to_the_hub_cache_inside_our_folder(tmp_path, monkeypatch, hub_answers):
    calls = []

    def fake_download(**kwargs: object) -> str:
        calls.append(kwargs)
        return str(tmp_path / "blob")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_weights(None, cache_dir=tmp_path) == tmp_path / "blob"
    assert calls == [{"repo_id": "YaohuiW/LIA-X", "filename": "lia-x.pt", "cache_dir": tmp_path / "hub"}]


def test_explicit_path_must_exist(tmp_path):
    missing = tmp_path / "nowhere" / "lia-x.pt"
    with pytest.raises(CheckpointError, match="--weights PATH") as err:
        resolve_weights(missing, cache_dir=tmp_path)
    assert str(missing) in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        resolve_weights(tmp_path, cache_dir=tmp_path)


def test_hand_placed_file_is_used_without_network(tmp_path, offline):
    write(tmp_path / "lia-x.pt", b"x")
    assert resolve_weights(None, cache_dir=tmp_path) == tmp_path / "lia-x.pt"
    write(tmp_path / "lia-x.safetensors", b"x")
    assert resolve_weights(None, cache_dir=tmp_path) == tmp_path / "lia-x.safetensors"


def test_earlier_download_is_found_in_hub_cache(tmp_path, offline):
    repo = tmp_path / "hub" / "models--YaohuiW--LIA-X"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    cached = write(repo / "snapshots" / commit / "lia-x.pt", b"x")
    assert resolve_weights(None, cache_dir=tmp_path) == cached


def test_no_file_and_no_download_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_weights(None, download=False, cache_dir=tmp_path)
    message = str(err.value)
    assert "downloading is turned off" in message
    assert str(tmp_path / "lia-x.pt") in message and "--weights PATH" in message and HUB_URL in message


# --- broken files ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "lia-x.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_file_is_incomplete(tmp_path, suffix):
    with pytest.raises(CheckpointError, match="incomplete or corrupt.*0 bytes.*3.6 GB.*Delete it"):
        read_state_dict(write(tmp_path / f"lia-x{suffix}", b""))


CUTS = [0.1, 0.5, 0.99]


@pytest.mark.parametrize("kept", CUTS)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_pt_is_incomplete(tmp_path, legacy, kept):
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(256, 256), "b": torch.randn(256)}, whole,
               _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    size = int(len(data) * kept)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(write(tmp_path / "lia-x.pt", data[:size]))
    message = str(err.value)
    assert "incomplete or corrupt" in message and f"{size:,} bytes" in message
    assert "3.6 GB" in message and "download it again" in message


@pytest.mark.parametrize("kept", CUTS)
def test_truncated_safetensors_is_incomplete(tmp_path, kept):
    whole = tmp_path / "whole.safetensors"
    save_file({"w": torch.randn(256, 256), "b": torch.randn(256)}, whole)
    data = whole.read_bytes()
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        read_state_dict(write(tmp_path / "lia-x.safetensors", data[: int(len(data) * kept)]))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (os.urandom(4096), "not a PyTorch checkpoint"),
        (b"hello, this is a note\nnot weights\n", "a text file starting with 'hello, this is a note"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3642\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>LIA-X</body></html>", "web page"),
    ],
    ids=["random", "text", "lfs-pointer", "html"],
)
def test_not_a_checkpoint(tmp_path, data, says):
    path = write(tmp_path / "lia-x.pt", data)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert "not a PyTorch checkpoint" in str(err.value) and says in str(err.value)
    assert "--weights PATH" in str(err.value)


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "lia-x.pt"
    torch.save({"w": torch.zeros(2), "extra": NotAllowedInCheckpoints()}, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert "refuses to run code" in message
    assert "NotAllowedInCheckpoints" in message


def test_training_checkpoint_nesting_is_unwrapped(tmp_path):
    path = tmp_path / "train.pt"
    torch.save({"gen": {"w": torch.ones(3, dtype=torch.float16)}, "step": torch.tensor(7)}, path)
    state = read_state_dict(path)
    assert list(state) == ["w"] and state["w"].dtype == torch.float32


def test_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / "lia-x.pt"
    torch.save({"epoch": 3, "state_dict": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="no state dict of tensors.*'epoch'"):
        read_state_dict(path)


# --- another model, or LIA-X of another size ------------------------------------------------


def test_lia_v1_is_recognised(release_layout):
    with pytest.raises(CheckpointError) as err:
        check_layout(lia_v1_like(), release_layout, source=Path("old.pt"))
    message = str(err.value)
    assert "old.pt is not an LIA-X checkpoint" in message
    assert "LIA-X generator (width 2.0, motion_dim 40), 596 tensors" in message
    assert "Found: 4 tensors; it looks like LIA v1 (256x256)" in message
    assert "gen.enc.net_app.convs.0.0.weight" in message  # an unexpected name
    assert "enc.enc_2r.block1.0.weight (128, 3, 1, 1)" in message  # an expected name and shape


def test_live_portrait_is_recognised(release_layout):
    with pytest.raises(CheckpointError, match="looks like LivePortrait"):
        check_layout(live_portrait_like(), release_layout)
    with pytest.raises(CheckpointError, match="does not look like LIA-X.*looks like LivePortrait"):
        infer_dims(live_portrait_like())


def test_unknown_model_lists_its_names(release_layout):
    foreign = {f"backbone.layer{i}.weight": torch.zeros(2) for i in range(5)}
    with pytest.raises(CheckpointError, match=r"first names are backbone.layer0.weight.*\(and 2 more\)"):
        check_layout(foreign, release_layout)


def test_lia_x_of_another_size(golden_state, release_layout):
    with pytest.raises(CheckpointError) as err:
        check_layout(golden_state, release_layout)
    message = str(err.value)
    assert "it looks like an LIA-X generator (width 0.5, motion_dim 40)" in message
    assert "expected (128, 3, 1, 1)" in message and "Missing" not in message


# --- the right names and shapes, with values the model cannot use -------------------------


def broken_copy(tiny_state: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**tiny_state, name: tensor}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_weights_are_refused_naming_the_file(tmp_path, tiny_state, value):
    weights = tiny_state[MARKED].clone()
    weights[3, 5] = value
    path = tmp_path / "diverged.pt"
    torch.save(broken_copy(tiny_state, MARKED, weights), path)
    with pytest.raises(CheckpointError) as err:
        LIAX.from_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "NaN or infinite" in message
    assert f"1 of the {weights.numel():,} values of {MARKED}" in message and "black" in message


def test_integer_weights_are_refused_naming_the_file(tmp_path, tiny_state):
    path = tmp_path / "ints.pt"
    torch.save(broken_copy(tiny_state, MARKED, tiny_state[MARKED].to(torch.int32)), path)
    with pytest.raises(CheckpointError) as err:
        LIAX.from_checkpoint(path)
    assert str(path) in str(err.value) and f"{MARKED} of type torch.int32" in str(err.value)


def test_a_wrong_width_of_the_first_conv_is_named_with_the_file(tmp_path, tiny_state):
    first_conv = "enc.enc_2r.block1.0.weight"
    path = tmp_path / "wider.pt"
    torch.save(broken_copy(tiny_state, first_conv, torch.zeros(9, 3, 1, 1)), path)
    with pytest.raises(CheckpointError) as err:
        LIAX.from_checkpoint(path)
    assert str(path) in str(err.value)
    assert f"Wrong shapes, e.g.: {first_conv} is (9, 3, 1, 1), expected (8, 3, 1, 1)" in str(err.value)


@pytest.mark.parametrize("latent", [72, 520, 40])
def test_a_motion_head_of_no_model_size_is_named_with_the_file(tmp_path, tiny_state, latent):
    path = tmp_path / "odd.pt"
    torch.save(broken_copy(tiny_state, "enc.enc_r2t.0.weight", torch.zeros(40, latent)), path)
    with pytest.raises(CheckpointError, match=rf"{path}.*shape \(40, {latent}\).*no LIA-X model has that size"):
        LIAX.from_checkpoint(path)


def test_a_state_dict_of_nans_in_memory_is_refused_too(tiny_state):
    with pytest.raises(CheckpointError, match="The checkpoint holds NaN or infinite weights"):
        check_state(broken_copy(tiny_state, MARKED, torch.full_like(tiny_state[MARKED], float("nan"))))


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_nan_or_infinite_checkpoint_exits_2_with_a_message(tmp_path, tiny_state, value):
    path = tmp_path / "diverged.pt"
    torch.save(broken_copy(tiny_state, MARKED, torch.full_like(tiny_state[MARKED], float(value))), path)
    portrait, out = tmp_path / "portrait.png", tmp_path / "edited.png"
    torch.save({}, portrait)  # any file: the weights are refused before it is read
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "edit-image", "--source", str(portrait), "--out", str(out),
         "--weights", str(path), "--device", "cpu", "--no-crop"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "LIVEANIM_CACHE": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert f"{path} holds NaN or infinite weights" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# --- a good file ----------------------------------------------------------------------------


def test_good_checkpoint_loads_and_fits(small_pt, small_layout, tmp_path):
    state = load_weights(small_pt, cache_dir=tmp_path)
    check_layout(state, small_layout)
    assert infer_dims(state) == (0.5, 40)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())


def test_model_loads_from_a_pt_through_the_cache(small_pt, golden_state, private_cache):
    model = LIAX.from_checkpoint(small_pt)
    assert (model.width, model.motion_dim) == (0.5, 40)
    assert torch.equal(model.state_dict()["dec.direction.weight"], golden_state["dec.direction.weight"])
    assert len(list((private_cache / "safetensors").glob("lia-x-*.safetensors"))) == 1


def test_safetensors_cache_round_trip(small_pt, golden_state, tmp_path, monkeypatch):
    first = load_weights(small_pt, cache_dir=tmp_path)
    copies = list((tmp_path / "safetensors").glob("*.safetensors"))
    assert len(copies) == 1 and copies[0].name.startswith("lia-x-")

    def pickle_forbidden(*_: object, **__: object) -> None:
        raise AssertionError("the second load must not unpickle the .pt")

    monkeypatch.setattr(torch, "load", pickle_forbidden)
    second = load_weights(small_pt, cache_dir=tmp_path)
    assert second.keys() == golden_state.keys()
    assert all(torch.equal(second[k], golden_state[k]) and torch.equal(first[k], second[k]) for k in second)


def test_changed_pt_replaces_its_old_copy(tmp_path, tiny_state):
    pt = save_tiny(tmp_path / "lia-x.pt", tiny_state, fill=0.0)
    old = cached_safetensors(pt, tmp_path / "cache")
    save_tiny(pt, tiny_state, fill=1.0)
    os.utime(pt, ns=(pt.stat().st_atime_ns, pt.stat().st_mtime_ns + 10**9))
    new = cached_safetensors(pt, tmp_path / "cache")
    assert new != old and not old.exists()
    assert torch.equal(read_state_dict(new)[MARKED], torch.ones_like(tiny_state[MARKED]))


def test_other_models_are_never_cached(tmp_path):
    pt = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(3)}, pt)
    with pytest.raises(CheckpointError, match="does not look like LIA-X"):
        cached_safetensors(pt, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def same_size_and_time(path: Path, like: Path) -> None:
    """Give `path` the modification time of `like` (files copied with their times kept)."""
    assert path.stat().st_size == like.stat().st_size
    os.utime(path, ns=(like.stat().st_atime_ns, like.stat().st_mtime_ns))


def forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def pickle_forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a load that has its cached copy must not unpickle the .pt")

    monkeypatch.setattr(torch, "load", pickle_forbidden)


def test_two_same_named_checkpoints_keep_separate_caches(tmp_path, tiny_state, monkeypatch):
    first = save_tiny(tmp_path / "a" / "tiny.pt", tiny_state, fill=0.25)
    second = save_tiny(tmp_path / "b" / "tiny.pt", tiny_state, fill=-0.25)
    same_size_and_time(second, first)  # even the size and the time agree: only the content differs
    cache = tmp_path / "cache"
    loaded = [load_weights(path, cache_dir=cache)[MARKED] for path in (first, second)]
    assert len(list((cache / "safetensors").glob("tiny-*.safetensors"))) == 2
    forbid_unpickling(monkeypatch)
    again = [load_weights(path, cache_dir=cache)[MARKED] for path in (first, second, first)]
    for state, fill in zip([*loaded, *again], [0.25, -0.25, 0.25, -0.25, 0.25]):
        assert torch.equal(state, torch.full_like(state, fill))


def test_a_file_changed_in_place_is_converted_again_even_with_its_size_and_time_kept(tmp_path, tiny_state):
    pt = save_tiny(tmp_path / "lia-x.pt", tiny_state, fill=0.5)
    before = pt.stat()
    first = load_weights(pt, cache_dir=tmp_path / "cache")[MARKED]
    save_tiny(pt, tiny_state, fill=-0.5)
    os.utime(pt, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert pt.stat().st_size == before.st_size
    second = load_weights(pt, cache_dir=tmp_path / "cache")[MARKED]
    assert torch.equal(first, torch.full_like(first, 0.5)) and torch.equal(second, torch.full_like(first, -0.5))
    assert len(list((tmp_path / "cache" / "safetensors").glob("*.safetensors"))) == 1, "the old copy is gone"


def test_a_copy_is_kept_while_another_path_still_needs_it(tmp_path, tiny_state):
    first = save_tiny(tmp_path / "a" / "lia-x.pt", tiny_state, fill=0.5)
    second = tmp_path / "b" / "lia-x.pt"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    same_size_and_time(second, first)
    cache = tmp_path / "cache"
    shared = cached_safetensors(first, cache)
    assert cached_safetensors(second, cache) == shared, "one copy for the same content"
    save_tiny(first, tiny_state, fill=0.75)
    assert cached_safetensors(first, cache) != shared and shared.exists(), "b/lia-x.pt still uses it"
    assert cached_safetensors(second, cache) == shared


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(tensors: dict, path: Path) -> None:
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "save_file", half_written)


def report_no_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: SimpleNamespace(free=10))


def block_cache_dir(cache: Path) -> None:
    """A file where the cache folder should be: no folder can be made there, even as root."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"")


@pytest.mark.parametrize("breakage", ["disk-full-while-writing", "no-room", "unwritable"])
def test_cache_failure_only_warns(tmp_path, monkeypatch, caplog, breakage, tiny_state):
    pt = save_tiny(tmp_path / "lia-x.pt", tiny_state, fill=2.0)
    cache = tmp_path / "cache" / "safetensors"
    if breakage == "disk-full-while-writing":
        fill_disk(monkeypatch)
    elif breakage == "no-room":
        report_no_room(monkeypatch)
    else:
        block_cache_dir(cache)
    with caplog.at_level(logging.WARNING, logger="liveanim.weights"):
        state = load_weights(pt, cache_dir=tmp_path / "cache")
    assert torch.equal(state[MARKED], torch.full_like(state[MARKED], 2.0))
    assert "Could not write the safetensors cache" in caplog.text and "LIVEANIM_CACHE" in caplog.text
    if cache.is_dir():
        assert list(cache.iterdir()) == []  # no partial file left behind


def test_weights_command_checks_a_local_file(small_pt, caplog):
    from liveanim.app.cli import main

    with caplog.at_level(logging.INFO, logger="liveanim"):
        assert main(["weights", "--weights", str(small_pt)]) == 0
    assert "weights OK: LIA-X width 0.5, motion_dim 40" in caplog.text


def test_weights_command_offline_says_what_to_do(monkeypatch, caplog):
    from liveanim.app.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.ERROR, logger="liveanim"):
        assert main(["weights"]) == 2
    assert "--weights PATH" in caplog.text and "huggingface.co/YaohuiW/LIA-X" in caplog.text
