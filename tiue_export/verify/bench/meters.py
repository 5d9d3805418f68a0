"""What bench measures besides time: peak resident and device memory, the matrix-multiply rates a
run's FLOP shares are measured against, the FLOPs of the UNet and the VAE decoder, the machine."""

from __future__ import annotations

import platform
import threading
import time


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class DeviceMeter:
    """What a run on ``device`` synchronises and measures: on a GPU, ``sync`` waits for its work
    and ``peak_mb`` is ``torch.cuda.max_memory_allocated`` since :meth:`reset`; on the CPU both
    are no-ops (the CPU rows report peak RSS)."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        if self.cuda:
            import torch

            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**20


def matmul_rate(dtype: str = "fp32", n: int = 2048, reps: int = 5, min_seconds: float = 0.05, device="cpu") -> float:
    """Best achieved GFLOP/s of a square torch matmul in ``dtype`` on ``device``.

    The side doubles from 256 up to ``n`` while one product takes under ``min_seconds``: large
    enough to reach the kernel's rate, and bounded where ``dtype`` has no fast kernel (bf16 on a
    CPU without bf16 instructions runs a reference loop: a 2048-side product takes minutes). On a
    GPU every product is synchronised (fp32 there is full fp32: PyTorch's default, no TF32).
    """
    import torch

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(a, b) -> float:
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t0

    size = min(256, n)
    while True:
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)
        once(a, b)  # warm-up (oneDNN/MKL/cuBLAS kernel selection)
        best = once(a, b)
        if size >= n or best >= min_seconds:
            break
        size = min(2 * size, n)
    for _ in range(reps - 1):
        best = min(best, once(a, b))
    return 2 * size**3 / best / 1e9


def matmul_peaks(device) -> tuple[dict[str, float], list[str]]:
    """The matmul rates a run's FLOP shares are measured against, and the precisions left out
    because this CPU only emulates them: fp32, fp16 and bf16 on a GPU (8192-side products); fp32
    on the CPU, and bf16 where it has bf16 dot products (AVX512-BF16, AMX-BF16): elsewhere a bf16
    matmul converts to fp32 and its rate is no peak. int8 has no torch matmul to measure it by."""
    import torch

    from ...cpu import cpu_features

    if torch.device(device).type == "cuda":
        return {dt: matmul_rate(dt, n=8192, device=device) for dt in ("fp32", "fp16", "bf16")}, []
    native = cpu_features().native
    emulated = [dt for dt in ("bf16",) if not native[dt]]
    return {dt: matmul_rate(dt) for dt in ("fp32", "bf16") if dt not in emulated}, emulated


def unet_flops(unet_config: dict, timesteps, batch: int, latent_hw: tuple[int, int], seq_len: int) -> dict[str, int]:
    """FLOPs of the one-pass UNet (encoder once, K-batched decoder once), counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from ...reference.student import TiUEStudent

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        student = TiUEStudent(unet, timesteps)
        x = torch.empty(batch, unet.config.in_channels, *latent_hw)
        ehs = torch.empty(batch, seq_len, unet.config.cross_attention_dim)
        with FlopCounterMode(display=False) as fc:
            feats = student.encode(x, ehs)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            student.decode(feats, ehs)
        dec = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            unet(x, int(timesteps[0]), encoder_hidden_states=ehs)
        full = fc.get_total_flops()
    return {"unet_encoder": int(enc), "unet_decoder": int(dec), "one_pass_unet": int(enc + dec), "full_unet_step": int(full)}


def decoder_flops(vae, batch: int, latent_hw: tuple[int, int]) -> int:
    """FLOPs of ``vae.decode`` (an ``AutoencoderKL`` or ``AutoencoderTiny``) on one latent batch, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = type(vae).from_config(vae.config)
        z = torch.empty(batch, model.config.latent_channels, *latent_hw)
        with FlopCounterMode(display=False) as fc:
            model.decode(z)
    return int(fc.get_total_flops())


def machine_info(device="cpu") -> dict:
    import os

    import torch

    from ...cpu import cpu_features

    cpu = cpu_features()
    info = {
        "cpu": cpu.model,
        "vendor": cpu.vendor,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": list(cpu.flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info

