"""Building the PyTorch model an engine or an export starts from."""

from __future__ import annotations

import logging


from liveanim.engines.base import EngineConfig
from liveanim.model import LIAX
from liveanim.model.seeded import seed_parameters_

log = logging.getLogger(__name__)


def load_model(config: EngineConfig) -> LIAX:
    """The LIA-X model of `config`: the checkpoint (downloaded on first need) or seeded weights."""
    if config.seeded:
        log.info("using seeded random weights (width %s, seed %d): for benchmarks and tests only",
                 config.width, config.seed)
        return seed_parameters_(LIAX(config.width), config.seed).eval().requires_grad_(False)
    from liveanim.weights import resolve_weights

    path = resolve_weights(config.weights)
    log.info("loading weights from %s", path)
    return LIAX.from_checkpoint(path)
