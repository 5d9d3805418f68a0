"""The torch-free runtime: run an exported bundle with ONNX Runtime (or OpenVINO, or TensorRT)
and the ``tokenizers`` library.

    from tiue_export.runtime import Pipeline
    with Pipeline.load("bundle/") as pipe:
        result = pipe(["a photo of a cat"], seed=0)   # result.images: uint8 NHWC
    with Pipeline.load("bundle/", backend="openvino") as pipe:   # bf16 on CPUs with AMX
        ...

Importing this package never imports torch (a test checks it).
"""

from ..backends.onnxruntime import OrtRunner, SessionLoader, choose_providers
from ..backends.openvino import OvLoader, OvRunner, openvino_default_precision
from ..bundle import MANIFEST, SCHEMA_VERSION, VALIDATION, Bundle, sha256_file
from ..sampling import SampleResult
from .pipeline import BundleTokenizer, Pipeline, openvino_options

__all__ = [
    "Bundle",
    "BundleTokenizer",
    "MANIFEST",
    "OrtRunner",
    "OvLoader",
    "OvRunner",
    "Pipeline",
    "SampleResult",
    "SCHEMA_VERSION",
    "SessionLoader",
    "VALIDATION",
    "choose_providers",
    "openvino_default_precision",
    "openvino_options",
    "sha256_file",
]
