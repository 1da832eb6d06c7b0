"""Getting the LIA-X weights: find or download the file, read it safely, check it fits the model.

    state = load_weights(args.weights)             # resolve -> download -> (cached) read
    check_layout(state, LIAX.expected_layout(width, motion_dim))
"""

from liveanim.weights.checkpoint import (
    cached_safetensors,
    check_layout,
    infer_dims,
    load_weights,
    read_state_dict,
)
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
    "default_cache_dir",
    "download_weights",
    "find_cached_weights",
    "infer_dims",
    "load_weights",
    "read_state_dict",
    "resolve_weights",
]
