"""Inference backends behind one interface (see engines/base.py)."""

from __future__ import annotations

import logging

from engines.base import FEATURE_NAMES, Engine, EngineConfig, Tensors
from engines.devices import resolve_device

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "Tensors", "FEATURE_NAMES", "create_engine"]


def create_engine(config: EngineConfig) -> Engine:
    """The engine `config` asks for; 'auto' picks the fastest backend this machine has."""
    from engines.torch_engine import TorchEngine

    device = resolve_device(config.device)
    engine = TorchEngine(config, device)
    log.info("engine: %s", engine.describe())
    return engine
