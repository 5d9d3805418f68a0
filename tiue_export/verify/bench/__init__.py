"""Latency of every backend against the PyTorch reference, side by side, in one run.

For each backend: warm-up, then N timed runs of the whole one-pass pipeline, timing every stage
(text encoder, UNet encoder, K-batched decoder, sum, VAE) and the end to end; peak memory; the
UNet's achieved FLOP rate (FLOPs counted once per shape on the meta device) against this
machine's measured matrix-multiply rate. In the same run it times the references the method is
about: the same student as a K-step loop (full UNet every step) and the teacher's N-step DDIM
with classifier-free guidance.

On a CUDA device (``--device cuda``) the PyTorch rows run there in fp16 (or ``--dtype``): every
stage is timed with CUDA events, the matmul peaks are the GPU's, the peak device memory is
``torch.cuda.max_memory_allocated``, and ``--compile`` adds a row per fast path (torch.compile,
CUDA graphs) beside eager.

The modules split by concern: :mod:`.meters` (memory, matmul peaks, FLOPs, the machine),
:mod:`.timing` (timed chains), :mod:`.runtime_memory` (the torch-free runtime in a fresh
process), :mod:`.report` (rates, Markdown, chart, files) and :mod:`.run` (what one run measures).
"""

from .report import chart_missing, to_markdown, write_report
from .run import SHAPES, BenchConfig, run_bench

__all__ = ["SHAPES", "BenchConfig", "chart_missing", "run_bench", "to_markdown", "write_report"]
