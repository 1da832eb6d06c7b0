"""User-facing errors: each message says what went wrong and what the person can do.

Internal contracts (tensor shapes, programming errors) use asserts instead.
"""


class LiveAnimError(Exception):
    """Base of every error a user may see; the CLI prints its message without a traceback."""


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


class EngineError(LiveAnimError):
    """An engine file is missing, stale, built for another GPU, or failed to run."""


class UsageError(LiveAnimError):
    """A command-line value or setting that cannot be used as given."""
