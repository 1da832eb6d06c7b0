"""LIAX: the LIA-X generator (arXiv 2508.09959) with the animation math as its public API.

    z_target = z_s + D(a_d) - D(a_0) + D(a_s + e)      (animation, relative motion)
    z_target = z_s + D(a_s + e)                        (editing, no driving)

`D` is linear, so both are `z_s + (a_d - a_0 + a_s + e) @ Q.T` with Q cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from liveanim.model.decoder import Decoder
from liveanim.model.dictionary import moved_latent
from liveanim.model.encoder import Encoder
from liveanim.motion.dials import MOTION_DIM

RESOLUTION = 512
RELEASED_WIDTH = 2.0


@dataclass(frozen=True)
class SourceState:
    """What the decoder needs of a source portrait, computed once per avatar.

    z:     (1, L) latent of the source (z_{s->r}).
    alpha: (1, motion_dim) the source's own motion code (a_s).
    feats: 7 feature maps, coarsest (8x8) first.
    """

    z: torch.Tensor
    alpha: torch.Tensor
    feats: tuple[torch.Tensor, ...]


def check_image(x: torch.Tensor, batch: int | None = None) -> None:
    """Shape contract of the model's image inputs: (B, 3, 512, 512)."""
    assert x.ndim == 4 and tuple(x.shape[1:]) == (3, RESOLUTION, RESOLUTION), tuple(x.shape)
    assert batch is None or x.shape[0] == batch, (tuple(x.shape), batch)


class LIAX(nn.Module):
    """The LIA-X generator. State-dict names and shapes are those of the released `lia-x.pt`."""

    def __init__(self, width: float = RELEASED_WIDTH, motion_dim: int = MOTION_DIM):
        """
        width:      channel multiplier; 2.0 is the released model (0.91 B parameters), 0.5 the
                    golden test model, down to 0.125 for fast tests.
        motion_dim: number of dictionary directions (40 for the released model).
        """
        super().__init__()
        assert int(64 * width) >= 8 and 64 * width == int(64 * width), f"unsupported width {width}"
        self.width = width
        self.motion_dim = motion_dim
        self.latent_dim = int(512 * width)
        self.enc = Encoder(width, self.latent_dim, motion_dim)
        self.dec = Decoder(width, self.latent_dim, motion_dim)

    def extra_repr(self) -> str:
        return f"width={self.width}, motion_dim={self.motion_dim}, latent_dim={self.latent_dim}"

    @classmethod
    def expected_layout(cls, width: float = RELEASED_WIDTH, motion_dim: int = MOTION_DIM) -> dict[str, tuple[int, ...]]:
        """State-dict names and shapes of a model, without allocating its memory."""
        with torch.device("meta"):
            model = cls(width, motion_dim)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | Mapping[str, torch.Tensor]) -> "LIAX":
        """A model loaded strictly from a checkpoint file or a state dict; width and motion_dim
        are read from the shapes. Names, shapes, types and values are checked first, and fail with
        a message that names the file."""
        from liveanim.weights import check_state, load_weights

        path = None if isinstance(checkpoint, Mapping) else Path(checkpoint)
        state = checkpoint if path is None else load_weights(path)
        width, motion_dim = check_state(state, source=path)
        with torch.device("meta"):
            model = cls(width, motion_dim)
        model.load_state_dict(state, strict=True, assign=True)
        return model.float().eval().requires_grad_(False)

    # -- encoders -------------------------------------------------------------------------
    def encode_source(self, x: torch.Tensor) -> SourceState:
        """x: (1, 3, 512, 512) in [-1, 1] -> the source's latent, motion code and features."""
        check_image(x, batch=1)
        z, feats = self.enc.enc_2r(x)
        return SourceState(z=z, alpha=self.enc.enc_r2t(z), feats=tuple(feats))

    def encode_motion(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 512, 512) in [-1, 1] -> motion codes (B, motion_dim)."""
        check_image(x)
        z, _ = self.enc.enc_2r(x)
        return self.enc.enc_r2t(z)

    # -- decoder --------------------------------------------------------------------------
    def directions(self) -> torch.Tensor:
        """Q: (L, motion_dim), the orthonormal dictionary basis (cached)."""
        return self.dec.direction.basis()

    def target_latent(self, source: SourceState, alpha_drive: torch.Tensor | None = None,
                      alpha_start: torch.Tensor | None = None, edit: torch.Tensor | None = None) -> torch.Tensor:
        """z_target (B, L) = z + (alpha_drive - alpha_start + alpha + edit) @ Q.T."""
        code = source.alpha
        if edit is not None:
            code = code + edit.to(code).reshape(-1, self.motion_dim)
        if alpha_drive is not None:
            start = torch.zeros_like(alpha_drive[:1]) if alpha_start is None else alpha_start
            code = code + (alpha_drive - start)
        return moved_latent(source.z, code, self.directions())

    def decode(self, z_target: torch.Tensor, feats: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        """z_target: (B, L); feats: the source's 7 maps -> image (B, 3, 512, 512), not clamped."""
        assert z_target.ndim == 2 and z_target.shape[1] == self.latent_dim, tuple(z_target.shape)
        return self.dec(z_target, list(feats))

    def render(self, source: SourceState, alpha_drive: torch.Tensor | None = None,
               alpha_start: torch.Tensor | None = None, edit: torch.Tensor | None = None) -> torch.Tensor:
        """The animated (with `alpha_drive`) or edited source: (B, 3, 512, 512).

        source:      from `encode_source`.
        alpha_drive: (B, motion_dim) driving motion codes, or None for image editing.
        alpha_start: (1 or B, motion_dim) the reference (neutral) driving code.
        edit:        (motion_dim,) or (B, motion_dim) dial offsets; zeros when None.
        """
        return self.decode(self.target_latent(source, alpha_drive, alpha_start, edit), source.feats)
