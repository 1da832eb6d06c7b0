"""Files written whole or not at all (liveanim/files.py): what the caches, the export manifest and
the live statistics are written with."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from liveanim.files import write_atomically


def _full_disk(path: Path) -> None:
    path.write_bytes(b"half of it")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("content, expected", [
    ("text: é\n", "text: é\n".encode()),
    (b"\x00\x01bytes", b"\x00\x01bytes"),
    (memoryview(b"a view"), b"a view"),
    (lambda path: path.write_bytes(b"written by a function"), b"written by a function"),
], ids=["text", "bytes", "memoryview", "function"])
def test_every_kind_of_content_is_written_into_a_new_folder(tmp_path, content, expected):
    target = tmp_path / "new" / "file.json"
    write_atomically(target, content)
    assert target.read_bytes() == expected
    assert sorted(target.parent.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("the old one")
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, _full_disk)
    assert target.read_text() == "the old one"
    assert sorted(tmp_path.iterdir()) == [target]


def test_writers_at_once_each_leave_a_whole_file(tmp_path):
    target = tmp_path / "compile_times.json"
    contents = [str(index) * 100_000 for index in range(8)]
    start = threading.Barrier(len(contents))
    failures: list[BaseException] = []

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(20):
                write_atomically(target, text)
        except BaseException as error:  # noqa: BLE001 - reported by the test's thread
            failures.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert target.read_text() in contents
    assert sorted(tmp_path.iterdir()) == [target]
