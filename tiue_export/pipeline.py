"""The PyTorch reference's public entry point (``from tiue_export.pipeline import load_pipeline``):
the pipeline itself lives in :mod:`tiue_export.reference.pipeline`."""

from .reference.pipeline import SampleResult, TorchPipeline, guided_denoiser, load_pipeline, unet_denoiser

__all__ = ["SampleResult", "TorchPipeline", "guided_denoiser", "load_pipeline", "unet_denoiser"]
