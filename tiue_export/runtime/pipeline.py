"""The torch-free one-pass pipeline: tokenizer -> text encoder -> unified encoder -> K-batched
decoder (Eq. 11 inside the fused graph, or :func:`~tiue_export.sampling.sample_one_pass` outside
it) -> VAE, all read from a bundle's manifest and run on ONNX Runtime.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError, require
from ..sampling import initial_noise, sample_one_pass, to_uint8_images
from ..specs import BatchProfile
from .bundle import Bundle
from .session import OrtRunner, OvLoader, OvRunner, SessionLoader, choose_providers, tensorrt_options

#: What runs the bundle's ONNX graphs.
ENGINES = ("onnxruntime", "openvino")

log = logging.getLogger("tiue_export")


@dataclass
class RuntimeResult:
    """Images (uint8 NHWC), the z0 latents they came from, seeds and per-stage seconds."""

    images: np.ndarray
    latents: np.ndarray
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    provider: str = ""


def openvino_options(word: str | None) -> dict:
    """``Pipeline.load`` keywords for ``--backend openvino --precision WORD``: ``int8`` runs the
    bundle's Q/DQ graphs; ``fp32`` / ``bf16`` / ``fp16`` set the compute precision; None: the CPU's."""
    graphs = "int8" if word == "int8" else None
    return {"engine": "openvino", "precision": graphs, "inference_precision": None if graphs else word}


class BundleTokenizer:
    """CLIP tokenization with the ``tokenizers`` library, as ``CLIPTokenizer(padding="max_length",
    truncation=True)``: ids padded with the bundle's pad id to its max length."""

    def __init__(self, bundle: Bundle):
        tokenizers = require("tokenizers", "tokenizers", why="the runtime's tokenizer")
        info = bundle.manifest["tokenizer"]
        path = bundle.path / info["file"]
        self.max_length = int(info["model_max_length"])
        self.tok = tokenizers.Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length=self.max_length)
        self.tok.enable_padding(pad_id=int(info["pad_id"]), pad_token=info.get("pad_token", ""), length=self.max_length)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        encodings = self.tok.encode_batch(list(prompts))
        for p, e in zip(prompts, encodings):
            if e.overflowing:
                log.warning("prompt is longer than this model's %d tokens: truncated: %r", self.max_length, p[:60])
        return np.asarray([e.ids for e in encodings], dtype=np.int64)


class Pipeline:
    """A loaded bundle; call it with prompts. Sessions open on first use and close with :meth:`close`
    (or at the end of a ``with`` block)."""

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        engine: str = "onnxruntime",
        inference_precision: str | None = None,
        low_memory: bool = False,
    ):
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
        if engine == "openvino" and providers:
            raise InputError("execution providers are ONNX Runtime's: the openvino engine runs on the CPU")
        if engine == "onnxruntime" and inference_precision is not None:
            raise InputError("inference_precision is OpenVINO's: ONNX Runtime runs each graph in the precision it was exported in")
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = engine
        self.inference_precision = inference_precision
        self.providers = choose_providers(providers) if engine == "onnxruntime" else ["OpenVINO CPU"]
        self.tokenizer = BundleTokenizer(bundle)
        self.threads = threads
        self.low_memory = low_memory
        self._runners: dict[str, OrtRunner | OvRunner] = {}

    @classmethod
    def load(
        cls,
        bundle,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        threads: int = 0,
        precision: str | None = None,
        engine: str = "onnxruntime",
        inference_precision: str | None = None,
        low_memory: bool = False,
    ) -> "Pipeline":
        """Open a bundle directory (checking every file's sha256 unless ``verify=False``).

        Args:
            bundle: the bundle directory written by ``tiue-export export``.
            providers: ONNX Runtime execution providers, best first; default: TensorRT EP, CUDA EP
                (when onnxruntime-gpu is installed), else the CPU.
            verify: check files against the manifest's sha256 (seconds for multi-GB bundles).
            threads: intra-op threads per session (0: ONNX Runtime's default).
            precision: run each graph's variant of this precision (``int8``: the Q/DQ graphs of
                ``tiue-export calibrate``); default: the graphs as exported.
            engine: ``onnxruntime`` or ``openvino`` (the same ONNX files, OpenVINO's CPU plugin).
            inference_precision: openvino only: ``fp32`` (exact), ``bf16`` or ``fp16``; default:
                the CPU's own (bf16 where it has bf16 units, e.g. AMX, else fp32).
            low_memory: hold one graph at a time: each stage opens its graph, runs and releases it,
                so the peak is the largest graph plus its activations instead of every graph at
                once; every call pays the graphs' load time (one-shot jobs, small machines).
        """
        bundle = Bundle.open(bundle, verify=verify).with_precision(precision)
        return cls(bundle, providers, threads, engine, inference_precision, low_memory)

    # -- sessions -----------------------------------------------------------------------------
    def _loader(self, name: str) -> SessionLoader | OvLoader:
        if self.engine == "openvino":
            return OvLoader(self.bundle.graph_path(name), self.inference_precision, self.threads)
        options = {}
        if "TensorrtExecutionProvider" in self.providers:
            profile = BatchProfile(**self.manifest["batch_profile"])
            spec = self.bundle.spec(name)
            fp16 = self.manifest["graphs"][name].get("precision") == "fp16"
            options["TensorrtExecutionProvider"] = tensorrt_options(spec.shape_profile(profile, self.bundle.k), fp16, None)
        return SessionLoader(self.bundle.graph_path(name), self.providers, options, self.threads)

    def runner(self, name: str) -> OrtRunner | OvRunner:
        """The open runner of graph ``name`` (opened on first use)."""
        if name not in self._runners:
            loader = self._loader(name)
            runner = OvRunner(loader) if isinstance(loader, OvLoader) else OrtRunner(loader)
            self._runners[name] = runner.__enter__()
        return self._runners[name]

    @property
    def provider(self) -> str:
        """What the graphs run on: the first provider ONNX Runtime accepted, or ``OpenVINO CPU <precision>``."""
        runner = next(iter(self._runners.values()), None)
        return runner.provider if runner else self.providers[0]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.__exit__(None, None, None)
        self._runners.clear()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- stages -------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.bundle.latent_shape

    @property
    def image_size(self) -> tuple[int, int]:
        img = self.manifest["image"]
        return int(img["height"]), int(img["width"])

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        return self.tokenizer(prompts)

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        return self.runner("text_encoder").infer({"input_ids": self.tokenize(prompts)})["text_embeddings"]

    def encode(self, latents: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner("unet_encoder").infer({"latents": latents, "text_embeddings": text})

    def decode(self, features: dict[str, np.ndarray], text: np.ndarray) -> np.ndarray:
        return self.runner("unet_decoder").infer({**features, "text_embeddings": text})["eps"]

    def decode_fused(self, features: dict[str, np.ndarray], text: np.ndarray, latents: np.ndarray) -> np.ndarray:
        return self.runner("unet_decoder_fused").infer({**features, "text_embeddings": text, "latents": latents})["z0"]

    def decode_latents(self, z0: np.ndarray) -> np.ndarray:
        """z0 to uint8 NHWC images (the graph divides by the VAE scaling factor itself)."""
        return to_uint8_images(self.runner("vae_decoder").infer({"latents": z0})["images"])

    def prepare(self, prompts, seeds=None, seed: int = 0, noise=None) -> tuple[list[str], list[int], np.ndarray]:
        """Checked ``(prompts, seeds, z_T)`` for a call: seeds default to ``seed, seed+1, ...``."""
        prompts = list(prompts)
        if not prompts:
            raise InputError("no prompt given")
        seeds = [seed + i for i in range(len(prompts))] if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        shape = (len(prompts), *self.latent_shape)
        if noise is None:
            noise = initial_noise(seeds, self.latent_shape)
        noise = np.ascontiguousarray(noise, dtype=np.float32)
        if noise.shape != shape:
            raise InputError(f"noise has shape {list(noise.shape)}, this bundle needs {list(shape)}")
        return prompts, seeds, noise

    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int] | None = None,
        seed: int = 0,
        noise: np.ndarray | None = None,
        fused: bool = True,
    ) -> RuntimeResult:
        """One image per prompt with the one-pass sampler.

        Args:
            prompts: the prompts.
            seeds: one seed per prompt; default ``seed, seed+1, ...``.
            noise: z_T (B, C, h, w) that replaces the seeded noise.
            fused: run Eq. 11 inside ``unet_decoder_fused`` (True) or in numpy after
                ``unet_decoder`` (False); both give the same latents up to float rounding.
        """
        prompts, seeds, noise = self.prepare(prompts, seeds, seed, noise)
        graphs = self.manifest["runtime"]["fused" if fused else "unfused"]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if not self.low_memory:
            opened = [self.runner(g) for g in graphs if g not in self._runners]
            if opened:  # sessions open on first use: report that apart from the stages
                timings["load"] = time.perf_counter() - t0

        def timed(stage, fn, *args):
            if self.low_memory:  # open this stage's graph now (timed as load), release it after
                t0 = time.perf_counter()
                graph = next(g for g in graphs if g.startswith(stage))
                self.runner(graph)
                timings["load"] = timings.get("load", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            out = fn(*args)
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
            if self.low_memory:
                self._runners.pop(graph).__exit__(None, None, None)
            return out

        text = timed("text_encoder", self.encode_text, prompts)
        features = timed("unet_encoder", self.encode, noise, text)
        if fused:
            z0 = timed("unet_decoder", self.decode_fused, features, text, noise)
        else:
            s = self.manifest["sampler"]
            z0, _ = sample_one_pass(
                noise,
                text,
                lambda *_: features,
                lambda f, c: timed("unet_decoder", self.decode, f, c),
                float(s["S"]),
                [float(e) for e in s["E"]],
            )
        images = timed("vae_decoder", self.decode_latents, np.ascontiguousarray(z0, dtype=np.float32))
        return RuntimeResult(images, np.asarray(z0, dtype=np.float32), seeds, timings, self.provider)
