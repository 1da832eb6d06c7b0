"""User-facing errors: each message says what went wrong and what the person can do.

What a person can do often depends on where they are: on the command line they pass an
option, in the window they pick a menu or a list. Such advice is a `Fix`, kept apart from
the message and worded by the front end that shows the error: `str(error)` in the command
line's words, `liveanim.app.ui.messages.window_text(error)` in the window's. Internal contracts (tensor
shapes, programming errors) use asserts instead.
"""

from __future__ import annotations

from enum import Enum


class Fix(Enum):
    """A way out of an error that each front end words its own way. The values are the command
    line's words; the window's are in `liveanim.app.ui.messages.WINDOW_FIXES`."""

    WEIGHTS_FILE = "If you have the weights file elsewhere, pass it with --weights PATH."
    NO_CROP = "If the picture is already cropped around the face, pass --no-crop."
    OTHER_CAMERA = "Pick another with --camera (list them with `python main.py devices`)."
    CPU_DEVICE = "Or run on the CPU with --device cpu."
    FP32 = "On the CPU use --precision fp32."
    FP16 = "Or use --precision fp16 (half the memory)."
    TORCH_ENGINE = "Use --engine torch."
    OTHER_ENGINE = "Or use --engine onnxruntime or --engine torch."
    BUILD_FOR_OTHER_GPUS = "build-engines --engine tensorrt-rtx --gpu-target CC builds engines for other machines."
    NO_COMPILE = "Leave out --compile: the engine then runs uncompiled, with CUDA graphs."
    TENSORRT_OR_TORCH = ("Use --engine tensorrt or torch on this GPU; build-engines --gpu-target CC still builds "
                         "engines for others here.")


class LiveAnimError(Exception):
    """Base of every error a user may see; the CLI prints its message without a traceback.

    message: what went wrong, and any advice that holds wherever it is shown.
    fix:     advice that depends on the front end (see `Fix`), added after the message.
    """

    def __init__(self, message: str = "", fix: Fix | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.worded(self.fix.value if self.fix else "")

    def worded(self, fix: str) -> str:
        """The message followed by the fix in one front end's words ('' for none): on a line of
        its own after a message of several lines, else as the next sentence."""
        if not fix:
            return self.message
        separator = "\n" if "\n" in self.message else " "
        return f"{self.message}{separator}{fix}"


class CheckpointError(LiveAnimError):
    """The weights file cannot be used (missing, truncated, corrupt or another model)."""


class WeightsDownloadError(LiveAnimError):
    """Model weights (LIA-X's or the face model) could not be downloaded."""


class NoFaceError(LiveAnimError):
    """An input image or frame holds no detectable face."""


class MediaError(LiveAnimError):
    """An image or video cannot be read or written."""


class CameraError(LiveAnimError):
    """A camera cannot be opened or stopped delivering frames."""


class VirtualCameraUnavailable(LiveAnimError):
    """No virtual-camera driver is installed or it refused to start.

    reason: what went wrong; setup: the one-time set-up of this OS that provides a virtual camera.
    """

    def __init__(self, reason: str, setup: str) -> None:
        super().__init__(f"{reason} {setup}")
        self.reason = reason
        self.setup = setup


class BackendUnavailable(LiveAnimError):
    """An inference backend (TensorRT, ONNX Runtime, CUDA) is not installed or not usable."""


class FaceDetectionUnavailable(BackendUnavailable):
    """mediapipe, which finds faces, is not installed or its native library cannot load."""


class EngineError(LiveAnimError):
    """An engine file is missing, stale, built for another GPU, or failed to run."""


class UsageError(LiveAnimError):
    """A command-line value or setting that cannot be used as given."""
