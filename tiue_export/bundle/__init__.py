"""The bundle as a typed, verified contract: :class:`Manifest` (frozen dataclasses per section),
:class:`Bundle` (a directory and its manifest, loaded through the JSON Schema and semantic
checks), and the one atomic writer of ``manifest.json``. Torch-free."""

from .directory import MANIFEST, REFERENCE, VALIDATION, Bundle, bundle_files, publish, save_manifest, sha256_file
from .manifest import EQ11, NUMPY_PCG64, SCHEMA_VERSION, Chain, Graph, Manifest, Sampler, Schedule, Tokenizer, Variant, default_chains

__all__ = [
    "Bundle", "Chain", "EQ11", "REFERENCE", "Graph", "MANIFEST", "Manifest", "NUMPY_PCG64", "SCHEMA_VERSION", "Sampler",
    "Schedule", "Tokenizer", "VALIDATION", "Variant", "bundle_files", "default_chains", "publish", "save_manifest",
    "sha256_file",
]
