"""The PyTorch reference pipeline: a diffusers-format model directory, sampled exactly.

Text -> embeddings -> sampler (one-pass TiUE, the same student as a K-step loop, or the teacher's
N-step DDIM with classifier-free guidance) -> VAE -> uint8 images. Every other backend is judged
by its parity with this one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..executor import require_finite
from ..sampling import MAX_SIZE_FACTOR, SamplerChoice, SampleResult, classifier_free_guidance, initial_noise, sample_ddim, to_uint8_images
from ..schedule import OnePassSchedule, ddim_plan
from .student import TiUEStudent
from .tiue_config import DEFAULT_GUIDANCE, StudentConfig

log = logging.getLogger("tiue_export")

COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


def unet_denoiser(unet, cond: torch.Tensor):
    """``eps(z, t)`` of a whole UNet conditioned on ``cond``."""

    def eps(z, t):
        return unet(z, t, encoder_hidden_states=cond).sample

    return eps


def guided_denoiser(unet, cond: torch.Tensor, uncond: torch.Tensor, guidance: float):
    """``eps(z, t)`` with classifier-free guidance (Ho & Salimans 2022), the unconditional and
    conditional rows in one UNet batch; ``t`` an integer timestep or one per row of ``z``."""
    both = torch.cat([uncond, cond])

    def eps(z, t):
        if torch.is_tensor(t) and t.ndim:
            t = torch.cat([t, t])
        eps_uncond, eps_cond = unet(torch.cat([z, z]), t, encoder_hidden_states=both).sample.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance)

    return eps


def _load(component: str, path: Path, loader):
    sub = path / component
    if not sub.is_dir():
        raise ModelError(f"{path}: missing component '{component}' (no {sub})")
    try:
        return loader(sub)
    except ModelError:
        raise
    except Exception as exc:  # any loader failure is a corrupt component to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load '{component}': {reason}") from exc


#: What to do with a bundle given where a model directory is due, for the commands that run one.
RUN_A_BUNDLE = "use --backend onnxruntime (or openvino, tensorrt) to run it"


def bundle_source(path: Path) -> str | None:
    """The model a bundle was exported from, as its manifest names it (None if it does not)."""
    try:
        source = json.loads((Path(path) / "manifest.json").read_text()).get("source", {}).get("model")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return source if isinstance(source, str) and source else None


def check_model_dir(path: Path, bundle_hint: str = RUN_A_BUNDLE) -> None:
    """Refuse, in one line, what is not a diffusers pipeline directory; ``bundle_hint`` says
    what to do instead when it is an exported bundle (the command's own way out)."""
    if not path.exists():
        raise ModelError(f"no such model directory: {path}")
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory (expected a diffusers pipeline directory)")
    if (path / "manifest.json").exists():
        raise ModelError(f"{path} is an exported bundle, not a model directory: {bundle_hint}")
    if not (path / "model_index.json").exists() and not (path / "unet").is_dir():
        raise ModelError(f"{path} is not a diffusers pipeline directory (no model_index.json)")


class TorchPipeline:
    """A diffusers-format TiUE student (or teacher) on PyTorch.

    Use :func:`load_pipeline` to build one from a directory.
    """

    def __init__(self, path, tokenizer, text_encoder, vae, unet, scheduler, student_config: StudentConfig | None, k=None):
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.vae_tiny = None  # an AutoencoderTiny that decodes instead of the VAE (``--vae tiny``)
        self.compile = "none"  # how the one-pass graphs run: eager, torch.compile or CUDA graphs (``--compile``)
        self.unet = unet
        self.scheduler = scheduler
        self.student_config = student_config
        cfg = student_config or StudentConfig()
        if k is not None and student_config is not None and k != cfg.k:
            log.warning("--k %d overrides the student's K=%d from tiue.json", k, cfg.k)
        self.schedule = OnePassSchedule.from_scheduler(
            scheduler, k=k or cfg.k, encoder_timestep=None if k else cfg.encoder_timestep
        )
        if k is None and cfg.timesteps is not None and tuple(cfg.timesteps) != self.schedule.timesteps:
            raise ModelError(
                f"{self.path}/tiue.json lists timesteps {list(cfg.timesteps)} but the scheduler gives "
                f"{list(self.schedule.timesteps)} for K={cfg.k}: fix one of them"
            )
        self.student = TiUEStudent(unet, self.schedule.timesteps, self.schedule.encoder_timestep).to(self.device)
        self._cache: dict = {}

    @property
    def device(self) -> torch.device:
        """Where the weights are (see :func:`load_pipeline`'s ``device``)."""
        return next(self.unet.parameters()).device

    @property
    def provider(self) -> str:
        """``PyTorch CPU float32``, ``PyTorch cuda:0 float16`` ...: where and in what the UNet runs."""
        from .torch_graphs import provider_name

        return provider_name(self.device, self.unet.dtype, self.compile)

    # -- sizes --------------------------------------------------------------------------------
    @property
    def is_teacher(self) -> bool:
        return self.student_config is not None and self.student_config.kind == "teacher"

    @property
    def default_sampler(self) -> str:
        return "ddim:50" if self.is_teacher else "one-pass"

    @property
    def default_guidance(self) -> float:
        """The CFG scale the model was made for (``tiue.json`` provenance ``guidance``), else 7.5."""
        return self.student_config.guidance if self.student_config else DEFAULT_GUIDANCE

    @property
    def decoder_vae(self):
        """What decodes z0: the tiny decoder when one is set, else the model's VAE."""
        return self.vae_tiny if self.vae_tiny is not None else self.vae

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: VAE factor times the UNet's downsampling."""
        return self.vae_scale_factor * 2**self.unet.num_upsamplers

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the latent for an image size; raises InputError on an impossible size."""
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % m != 0:
                raise InputError(f"{name} {v} is not possible for this model: use a positive multiple of {m}")
            if v > MAX_SIZE_FACTOR * self.default_size:
                raise InputError(
                    f"{name} {v} is over this model's largest, {MAX_SIZE_FACTOR * self.default_size} "
                    f"({MAX_SIZE_FACTOR}x its native {self.default_size}): ask for at most that"
                )
        f = self.vae_scale_factor
        return (int(self.unet.config.in_channels), height // f, width // f)

    # -- the graphs, as the executor runs them ---------------------------------------------------
    def geometry(self, height: int | None = None, width: int | None = None):
        """Sizes of every graph tensor at this image size (one encoder pass at batch 1, cached)."""
        from ..specs import Geometry

        latent = self.latent_shape(height, width)
        key = ("geometry", latent)
        if key not in self._cache:
            L = int(self.tokenizer.model_max_length)
            D = int(self.text_encoder.config.hidden_size)
            with torch.no_grad():
                zeros = {"dtype": self.unet.dtype, "device": self.device}
                feats = self.student.encode(torch.zeros((1, *latent), **zeros), torch.zeros((1, L, D), **zeros))
            f = self.vae_scale_factor
            self._cache[key] = Geometry(
                k=self.schedule.k,
                text_length=L,
                text_dim=D,
                vocab_size=int(self.text_encoder.config.vocab_size),
                latent=tuple(latent),
                image=(latent[1] * f, latent[2] * f),
                features=tuple((n, tuple(int(d) for d in x.shape[1:])) for n, x in zip(self.student.feature_names(), feats)),
            )
        return self._cache[key]

    def sampler_entry(self):
        """The manifest's sampler section: K, timesteps, S, E and the schedule they come from."""
        from ..bundle.manifest import Sampler, Schedule

        s = self.schedule
        config = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
        schedule = Schedule(int(self.scheduler.config.num_train_timesteps), tuple(float(a) for a in self.scheduler.alphas_cumprod.double().numpy()), config)
        return Sampler(s.k, s.timesteps, s.encoder_timestep, s.prev_timesteps, s.final_alpha_cumprod, s.S, tuple(s.E), schedule)

    def manifest(self, height: int | None = None, width: int | None = None, precision: str = "fp32", opset: int | None = None, batch=None):
        """The manifest a bundle of this model at this size would have (no files yet): the
        executor runs the PyTorch reference from it exactly as it runs a bundle."""
        from ..bundle.manifest import Graph, Manifest, Tokenizer, default_chains
        from ..specs import DEFAULT_OPSET, BatchProfile, graph_specs

        geo = self.geometry(height, width)
        specs = graph_specs(geo, opset or DEFAULT_OPSET)
        tok = self.tokenizer
        return Manifest(
            precision=precision,
            opset=opset or DEFAULT_OPSET,
            graphs={n: Graph.from_spec(spec, precision) for n, spec in specs.items()},
            chains=default_chains([n for n, _ in geo.features]),
            sampler=self.sampler_entry(),
            latent=geo.latent,
            image=geo.image,
            scaling_factor=float(self.vae.config.scaling_factor),
            features=dict(geo.features),
            tokenizer=Tokenizer("tokenizer", "tokenizer/tokenizer.json", int(tok.model_max_length), int(tok.pad_token_id), int(tok.bos_token_id), int(tok.eos_token_id), str(tok.pad_token)),
            batch_profile=batch or BatchProfile(),
        )

    def graphs(self, baked: bool = False, dtype: torch.dtype | None = None):
        """The PyTorch reference's graphs (:mod:`tiue_export.reference.torch_graphs`), for the executor."""
        from . import torch_graphs as torch_backend

        key = ("graphs", baked, dtype, self.vae_tiny is not None, self.compile)
        if key not in self._cache:
            self._cache[key] = torch_backend.graphs(self, self.manifest(), baked, dtype or self.unet.dtype, compile=self.compile)
        return self._cache[key]

    # -- stages ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], warn: bool = True) -> np.ndarray:
        """Token ids padded to the tokenizer's max length; over-long prompts truncate (and warn)."""
        max_len = self.tokenizer.model_max_length
        for p in prompts if warn else ():
            n = len(self.tokenizer(p, truncation=False).input_ids)
            if n > max_len:
                log.warning("prompt has %d tokens, more than this model's %d: truncated: %r", n, max_len, p[:60])
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="np"
        ).input_ids
        return ids.astype(np.int64)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = torch.from_numpy(self.tokenize(prompts)).to(self.device)
        return self.text_encoder(ids)[0].to(self.unet.dtype)

    @torch.no_grad()
    def decode_float(self, z0: torch.Tensor) -> np.ndarray:
        """Latents to the VAE's float NCHW output in [-1, 1]: ``vae.decode(z0 / scaling_factor)``
        (the tiny decoder's factor is 1: it takes z0 itself)."""
        vae = self.decoder_vae
        z0 = z0.to(device=self.device, dtype=vae.dtype)
        return vae.decode(z0 / vae.config.scaling_factor).sample.float().cpu().numpy()

    def decode_latents(self, z0: torch.Tensor) -> np.ndarray:
        """Latents to uint8 NHWC images."""
        return to_uint8_images(self.decode_float(z0))

    def denoiser(self, cond: torch.Tensor, uncond: torch.Tensor | None = None, guidance: float = 1.0):
        """``eps(z, t)`` of the whole UNet (no encoder sharing): with classifier-free guidance
        when ``uncond`` is given and ``guidance`` is not 1 (see :func:`guided_denoiser`)."""
        if uncond is None or guidance == 1.0:
            return unet_denoiser(self.unet, cond)
        return guided_denoiser(self.unet, cond, uncond, guidance)

    def ddim_plan(self, sampler: SamplerChoice) -> tuple[list[int], list[int], float]:
        """(timesteps, previous timesteps, final alpha_cumprod) of a ``loop`` or ``ddim:N`` sampler."""
        if sampler.kind == "loop":
            s = self.schedule
            return s.timesteps, s.prev_timesteps, s.final_alpha_cumprod
        return ddim_plan(self.scheduler, sampler.steps)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        sampler: str | SamplerChoice = "one-pass",
        guidance: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        noise: np.ndarray | None = None,
        noise_source: str = "numpy",
    ) -> SampleResult:
        """Sample one image per (prompt, seed) pair.

        Args:
            prompts: the prompts, one per image.
            seeds: one seed per image (see :func:`tiue_export.sampling.initial_noise`).
            sampler: ``one-pass`` (TiUE), ``loop`` (same student, K full-UNet DDIM steps) or
                ``ddim:N`` (N-step DDIM with classifier-free guidance ``guidance``).
            noise: optional z_T (B, C, h, w) that replaces the seeded noise.
            noise_source: ``numpy`` (PCG64 per image, the same on every backend) or ``torch``
                (``torch.randn`` from ``torch.Generator().manual_seed(seed)`` per image, as the
                authors' script draws it, for comparing with images it made on the CPU).
        """
        sampler = SamplerChoice.parse(sampler) if isinstance(sampler, str) else sampler
        if len(prompts) != len(seeds):
            raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if noise is None:
            noise = self._seeded_noise(seeds, height, width, noise_source)
        if sampler.kind == "one-pass":
            return self._sample_one_pass(prompts, seeds, noise)
        return self._sample_ddim(prompts, seeds, noise, sampler, guidance)

    def _seeded_noise(self, seeds: Sequence[int], height: int | None, width: int | None, noise_source: str) -> np.ndarray:
        """z_T for ``seeds`` drawn as ``noise_source`` says (see :meth:`sample`)."""
        shape = self.latent_shape(height, width)
        if noise_source == "numpy":
            return initial_noise(seeds, shape)
        if noise_source == "torch":
            return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]).numpy()
        raise InputError(f"unknown noise source {noise_source!r}: use numpy or torch")

    def _sample_one_pass(self, prompts: Sequence[str], seeds: Sequence[int], noise) -> SampleResult:
        """TiUE's one pass: the executor's unfused chain over this pipeline's graphs."""
        from ..executor import run_chain

        ids = self.tokenize(prompts)
        shape = tuple(np.shape(noise)[1:])
        manifest = self.manifest(shape[1] * self.vae_scale_factor, shape[2] * self.vae_scale_factor)
        result = run_chain(manifest, self.graphs(), ids, np.asarray(noise, dtype=np.float32), "unfused", keep=True)
        eps_out = result.values["unet_decoder.eps"]
        return SampleResult(to_uint8_images(result.images), result.z0, list(seeds), result.timings, eps=eps_out)

    def _sample_ddim(self, prompts: Sequence[str], seeds: Sequence[int], noise, sampler: SamplerChoice, guidance: float) -> SampleResult:
        """The DDIM references: the student's K-step ``loop`` or the ``ddim:N`` teacher with CFG."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cond = self.encode_text(prompts)
        timings["text_encoder"] = time.perf_counter() - t0
        z = torch.from_numpy(np.asarray(noise, dtype=np.float32)).to(device=self.device, dtype=self.unet.dtype)
        t0 = time.perf_counter()
        alphas = self.scheduler.alphas_cumprod.double().numpy()
        uncond = self.encode_text([""] * len(prompts)) if sampler.kind == "ddim" else None
        timesteps, prev, final = self.ddim_plan(sampler)
        z0 = sample_ddim(z, self.denoiser(cond, uncond, guidance), timesteps, prev, alphas, final)
        timings["unet"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        z0 = z0.float().cpu()
        require_finite({"inputs.noise": np.asarray(noise), f"{sampler}.z0": z0.numpy()})
        decoded = self.decode_float(z0)
        require_finite({"vae_decoder.images": decoded})
        timings["vae_decoder"] = time.perf_counter() - t0
        return SampleResult(to_uint8_images(decoded), z0.numpy(), list(seeds), timings)


def load_pipeline(
    path, k: int | None = None, dtype: torch.dtype = torch.float32, vae: str = "full", device="cpu", compile: str = "none"
) -> TorchPipeline:
    """Load a diffusers-format pipeline directory (a TiUE student, the authors' or ours, or a teacher).

    Args:
        path: directory with tokenizer/, text_encoder/, vae/, unet/, scheduler/ and, optionally,
            ``tiue.json`` (K, timesteps, encoder timestep, provenance).
        k: override the number of decoder timesteps.
        dtype: weights dtype (float32 by default: the highest precision on CPU).
        vae: ``full`` (the model's VAE decodes), ``tiny`` (its distilled tiny decoder, see
            :mod:`tiue_export.reference.tiny_vae`) or a ``distill-vae`` output directory.
        device: where the weights go (``cpu``, ``cuda``, ``cuda:1``, a ``torch.device``; see
            :func:`tiue_export.reference.device.parse_device`); z_T is still drawn on the CPU.
        compile: how the one-pass sampler's graphs run: ``none`` (eager), a ``torch.compile`` mode
            (``default``, ``max-autotune-no-cudagraphs``, ``reduce-overhead``: inductor with CUDA
            graphs) or ``cuda-graphs`` (eager kernels captured once per batch size and replayed);
            see :func:`tiue_export.reference.torch_graphs.fast_module`. The loop and DDIM samplers stay eager.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from . import tiny_vae
    from .torch_graphs import check_compile_mode

    path = Path(path)
    compile = check_compile_mode(compile, device)
    check_model_dir(path)
    student_config = StudentConfig.read(path)

    def scheduler_loader(sub):
        cfg_file = sub / "scheduler_config.json"
        if not cfg_file.exists():
            raise ModelError(f"{path}: missing {cfg_file}")
        try:
            config = json.loads(cfg_file.read_text())
        except ValueError as exc:
            raise ModelError(f"{cfg_file}: not valid JSON ({exc})") from exc
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ModelError(f"{cfg_file}: prediction_type {config['prediction_type']!r}; only epsilon is supported")
        # The one-pass sum is DDIM's; like the authors, any scheduler config is read as DDIM.
        return DDIMScheduler.from_config(config)

    tokenizer = _load("tokenizer", path, lambda p: CLIPTokenizer.from_pretrained(p))
    text_encoder = _load("text_encoder", path, lambda p: CLIPTextModel.from_pretrained(p, torch_dtype=dtype))
    vae_choice = vae
    vae_model = _load("vae", path, lambda p: AutoencoderKL.from_pretrained(p, torch_dtype=dtype))
    if dtype == torch.float16 and getattr(vae_model.config, "force_upcast", True):
        vae_model = vae_model.float()  # as diffusers does: SD VAEs overflow in fp16, the UNet does not
    unet = _load("unet", path, lambda p: UNet2DConditionModel.from_pretrained(p, torch_dtype=dtype))
    scheduler = _load("scheduler", path, scheduler_loader)
    device = torch.device(device)
    for m in (text_encoder, vae_model, unet):
        m.eval().requires_grad_(False).to(device)
    tiny = tiny_vae.resolve(path, vae_choice)
    pipe = TorchPipeline(path, tokenizer, text_encoder, vae_model, unet, scheduler, student_config, k=k)
    if tiny is not None:
        pipe.vae_tiny = tiny_vae.load(tiny, dtype).to(device)
    pipe.compile = compile
    return pipe
