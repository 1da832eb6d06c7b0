"""The input shapes the per-frame graphs are made for: a batch of 1 or of a bucket's size (each
new shape would compile for minutes), and the key each compiled or captured graph is kept under."""

from __future__ import annotations

from typing import Callable

import torch

GraphFn = Callable[..., torch.Tensor]
ShapeKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]


def shape_key(args: tuple[torch.Tensor, ...]) -> ShapeKey:
    """The shapes and dtypes of a call's inputs: a graph made for one key serves no other."""
    return tuple((tuple(a.shape), a.dtype) for a in args)


class BatchBuckets:
    """Calls `fn(x) -> tensor` with a batch of 1 or `size` only.

    Another batch is split into parts of `size`, and a shorter last part is padded with
    copies of its last item (the model treats every item alone, so the others are unchanged).
    """

    def __init__(self, fn: GraphFn, size: int):
        self._fn = fn
        self._size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] in (1, self._size):
            return self._fn(x)
        parts = []
        for start in range(0, x.shape[0], self._size):
            part = x[start:start + self._size]
            count = part.shape[0]
            if count not in (1, self._size):
                part = torch.cat([part, part[-1:].expand(self._size - count, *part.shape[1:])])
            parts.append(self._fn(part)[:count])
        return torch.cat(parts)
