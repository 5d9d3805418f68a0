"""tiue-export: export and edge inference for one-pass TiUE text-to-image students.

Heavy modules (torch, diffusers, onnxruntime, tensorrt) are imported by the submodules that need
them, so ``import tiue_export`` and ``tiue-export --help`` stay fast and work without a GPU.
"""

__version__ = "0.1.0"
