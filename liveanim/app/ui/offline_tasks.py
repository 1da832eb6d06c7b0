"""The offline modes of `liveanim.pipeline.offline`, made cancellable and observable for
background tasks.

The offline functions take any Animator; handing them an `ObservedAnimator` lets the task
count rendered frames and stop between batches, without a second copy of their logic.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from liveanim.app.ui.workers import TaskContext
from liveanim.pipeline import offline
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.video import VideoReader, read_image


class ObservedAnimator(Animator):
    """An Animator over the same engine that reports each rendered batch and honours a cancel.

    on_rendered: called with the number of frames just rendered.
    context:     the running task, checked for a cancel before every batch.
    """

    def __init__(self, animator: Animator, context: TaskContext, on_rendered: Callable[[int], None]) -> None:
        super().__init__(animator.engine)
        self._context = context
        self._on_rendered = on_rendered

    def render(self, avatar: Avatar, motion: torch.Tensor | None = None,
               edit: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        self._context.check()
        images = super().render(avatar, motion, edit)
        self._on_rendered(images.shape[0])
        return images


@dataclass(frozen=True)
class AnimateJob:
    """Animate `source` (a portrait image) with the face in `driving` (a video) into `out` (mp4)."""

    source: Path
    driving: Path
    out: Path
    edit: np.ndarray | None = None


def run_animate(animator: Animator, job: AnimateJob, context: TaskContext) -> offline.Written:
    """The offline `animate`, with progress per frame; a cancel or failure removes the partial file."""
    offline.prepare_output(job.out, video=True, inputs=(job.source, job.driving))
    with VideoReader(job.driving) as reader:
        total = reader.frame_count
    done = 0

    def rendered(count: int) -> None:
        nonlocal done
        done += count
        context.report(done / total if total else -1.0, f"{done} / {total or '?'} frames")

    context.report(-1.0, "Finding the faces...")
    try:
        return offline.animate(ObservedAnimator(animator, context, rendered), job.source, job.driving, job.out,
                               job.edit)
    except BaseException:
        job.out.unlink(missing_ok=True)
        raise


def run_edit_image(animator: Animator, source: Path, edit: np.ndarray, out: Path | None = None) -> np.ndarray:
    """The offline `edit_image` of `source` with `edit`; saved to `out` if given. Returns the
    edited uint8 RGB image (read back from the file the offline mode wrote)."""
    if out is not None:
        offline.edit_image(animator, source, out, edit)
        return read_image(out)
    with tempfile.TemporaryDirectory(prefix="liveanim-") as folder:
        preview = Path(folder) / "preview.png"
        offline.edit_image(animator, source, preview, edit)
        return read_image(preview)
