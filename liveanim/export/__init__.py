"""LIA-X -> ONNX: three static-resolution graphs, the dictionary basis Q and a manifest.

    manifest = export_model(model, Path("out"), ExportConfig(precision="fp16"))
    manifest = read_manifest(Path("out"))

See liveanim/contract.py for the graphs' names and shapes, liveanim/export/precision.py for what fp16 means.
"""

from liveanim.contract import DIRECTIONS_FILE, GRAPH_NAMES, MANIFEST_FILE, GraphSpec, TensorSpec
from liveanim.export.exporter import EXPORT_PRECISIONS, ExportConfig, export_model
from liveanim.export.manifest import Manifest, read_manifest, state_dict_sha256

__all__ = [
    "DIRECTIONS_FILE", "EXPORT_PRECISIONS", "GRAPH_NAMES", "MANIFEST_FILE", "ExportConfig", "GraphSpec", "Manifest",
    "TensorSpec", "export_model", "read_manifest", "state_dict_sha256",
]
