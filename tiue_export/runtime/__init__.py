"""The torch-free runtime: run an exported bundle with ONNX Runtime and the ``tokenizers`` library.

    from tiue_export.runtime import Pipeline
    with Pipeline.load("bundle/") as pipe:
        result = pipe(["a photo of a cat"], seed=0)   # result.images: uint8 NHWC

Importing this package never imports torch (a test checks it).
"""

from .bundle import MANIFEST, SCHEMA_VERSION, VALIDATION, Bundle, sha256_file
from .pipeline import BundleTokenizer, Pipeline, RuntimeResult
from .session import OrtRunner, SessionLoader, choose_providers

__all__ = [
    "Bundle",
    "BundleTokenizer",
    "MANIFEST",
    "OrtRunner",
    "Pipeline",
    "RuntimeResult",
    "SCHEMA_VERSION",
    "SessionLoader",
    "VALIDATION",
    "choose_providers",
    "sha256_file",
]
