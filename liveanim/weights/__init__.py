"""Getting the LIA-X weights: find or download the file, read it safely, check it fits the model.

    state = load_weights(args.weights)             # resolve -> download -> (cached) read
    width, motion_dim = check_state(state, source=args.weights)   # names, shapes, types, values
"""

from liveanim.weights.cache import cached_safetensors, content_key, load_weights
from liveanim.weights.checkpoint import check_layout, check_state, infer_dims, read_state_dict
from liveanim.weights.download import (
    LIAX_RELEASE,
    HubFile,
    default_cache_dir,
    download_weights,
    find_cached_weights,
    resolve_weights,
)

__all__ = [
    "LIAX_RELEASE",
    "HubFile",
    "cached_safetensors",
    "check_layout",
    "check_state",
    "content_key",
    "default_cache_dir",
    "download_weights",
    "find_cached_weights",
    "infer_dims",
    "load_weights",
    "read_state_dict",
    "resolve_weights",
]
