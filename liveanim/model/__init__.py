"""Pure nn.Modules of LIA-X (no I/O besides `LIAX.from_checkpoint`)."""

from liveanim.model.liax import LIAX, MOTION_DIM, RELEASED_WIDTH, RESOLUTION, SourceState

__all__ = ["LIAX", "SourceState", "MOTION_DIM", "RELEASED_WIDTH", "RESOLUTION"]
