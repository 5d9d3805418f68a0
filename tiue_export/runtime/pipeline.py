"""The torch-free one-pass pipeline: a bundle's tokenizer and graphs on a registry backend
(ONNX Runtime, OpenVINO, TensorRT), run by the one executor (:func:`~tiue_export.executor.run_chain`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .. import backends
from ..bundle import Bundle
from ..errors import InputError, require
from ..executor import run_chain
from ..sampling import SampleResult, initial_noise, to_uint8_images
from ..variants import with_vae

log = logging.getLogger("tiue_export")


def openvino_options(word: str | None) -> dict:
    """``Pipeline.load`` keywords for ``--backend openvino --precision WORD``: ``int8`` runs the
    bundle's Q/DQ graphs; ``fp32`` / ``bf16`` / ``fp16`` set the compute precision; None: the CPU's."""
    graphs = "int8" if word == "int8" else None
    return {"engine": "openvino", "precision": graphs, "inference_precision": None if graphs else word}


class BundleTokenizer:
    """CLIP tokenization with the ``tokenizers`` library, as the manifest's tokenizer rules say
    (``CLIPTokenizer(padding="max_length", truncation=True)``)."""

    def __init__(self, bundle: Bundle):
        tokenizers = require("tokenizers", "the runtime's tokenizer")
        info = bundle.manifest.tokenizer
        self.max_length = info.model_max_length
        self.tok = tokenizers.Tokenizer.from_file(str(bundle.path / info.file))
        self.tok.enable_truncation(max_length=self.max_length)
        self.tok.enable_padding(pad_id=info.pad_id, pad_token=info.pad_token, length=self.max_length)

    def __call__(self, prompts: Sequence[str], warn: bool = True) -> np.ndarray:
        encodings = self.tok.encode_batch(list(prompts))
        for p, e in zip(prompts, encodings):
            if e.overflowing and warn:
                log.warning("prompt is longer than this model's %d tokens: truncated: %r", self.max_length, p[:60])
        return np.asarray([e.ids for e in encodings], dtype=np.int64)


class Pipeline:
    """A loaded bundle on one backend; call it with prompts. Graphs open on first use and close
    with :meth:`close` (or at the end of a ``with`` block).

    ``graphs``: a graph set opened by the caller (e.g. TensorRT engines without CUDA graphs), in
    place of the backend's default one.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: str | backends.Backend = "onnxruntime",
        threads: int = 0,
        low_memory: bool = False,
        providers: Sequence[str] | None = None,
        vae: str = "full",
        graphs=None,
    ):
        self.backend = backends.resolve(backend, None, bundle.manifest) if isinstance(backend, str) else backend
        bundle = with_vae(bundle, vae, self.backend.engine)  # a vae_decoder row; composes with int8 UNet graphs
        if providers and self.backend.engine != "onnxruntime":
            raise InputError("execution providers are ONNX Runtime's: the openvino engine runs on the CPU")
        self.bundle = bundle.with_variant(self.backend.variant)
        self.manifest = self.bundle.manifest
        self.tokenizer = BundleTokenizer(bundle)
        self.graphs = graphs or self.backend.graphs(bundle, threads=threads, low_memory=low_memory, providers=providers)

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
        backend: str | None = None,
        vae: str = "full",
    ) -> "Pipeline":
        """Open a bundle directory (validating its manifest, and every file's sha256 unless
        ``verify=False``).

        Args:
            bundle: the bundle directory written by ``tiue-export export``.
            providers: ONNX Runtime execution providers, best first; default: TensorRT EP, CUDA EP
                (when onnxruntime-gpu is installed), else the CPU.
            verify: check files against the manifest's sha256 (seconds for multi-GB bundles).
            threads: intra-op threads per graph (0: the engine's default).
            precision: run each graph's variant of this precision (``int8``: the Q/DQ graphs of
                ``tiue-export calibrate``); default: the graphs as exported.
            engine: ``onnxruntime`` or ``openvino`` (the same ONNX files, OpenVINO's CPU plugin).
            inference_precision: openvino only: ``fp32`` (exact), ``bf16`` or ``fp16``; default:
                the CPU's own (bf16 where it has bf16 units, e.g. AMX, else fp32).
            low_memory: hold one graph at a time (peak = the largest graph and its activations);
                every call pays the graphs' load time (one-shot jobs, small machines).
            backend: a registry name (``openvino-int8``) instead of engine/precision words;
                ``tensorrt``: the bundle's only engine set.
            vae: ``tiny``: decode with the bundle's distilled tiny decoder (``export --vae tiny``).
        """
        opened = Bundle.open(bundle, verify=verify)
        if backend is None:
            if engine not in backends.ONNX_ENGINES:
                raise InputError(f"unknown engine {engine!r}: choose from {', '.join(backends.ONNX_ENGINES)}")
            if engine == "onnxruntime" and inference_precision is not None:
                raise InputError("inference_precision is OpenVINO's: ONNX Runtime runs each graph in the precision it was exported in")
            word = inference_precision if engine == "openvino" and precision is None else precision
            chosen = backends.resolve(engine, word, opened.manifest)
        else:
            chosen = backends.resolve(backend, None, opened.manifest)
        opened.with_variant(chosen.variant)  # no such graphs: refused now, with the command that makes them
        return cls(opened, chosen, threads, low_memory, providers, vae)

    # -- graphs ---------------------------------------------------------------------------------
    def runner(self, name: str):
        """The open runner of graph ``name`` (opened on first use)."""
        return self.graphs.runner(name)

    @property
    def provider(self) -> str:
        """What the graphs run on: the first provider ONNX Runtime accepted, ``OpenVINO CPU <precision>``, ..."""
        return self.graphs.provider

    @property
    def precision(self) -> str:
        """The precision results are judged at (the CPU's default for plain ``openvino``)."""
        return self.backend.precision(self.manifest)

    def close(self) -> None:
        self.graphs.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- single graphs (check, calibrate and tests call them one by one) ------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.manifest.latent

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.image

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        return self.tokenizer(prompts)

    def _run(self, graph: str, feed: dict) -> dict[str, np.ndarray]:
        return {k: self.graphs.to_host(v) for k, v in self.runner(graph).infer(feed).items()}

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        return self._run("text_encoder", {"input_ids": self.tokenize(prompts)})["text_embeddings"]

    def encode(self, latents: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        return self._run("unet_encoder", {"latents": latents, "text_embeddings": text})

    def decode(self, features: dict[str, np.ndarray], text: np.ndarray) -> np.ndarray:
        return self._run("unet_decoder", {**features, "text_embeddings": text})["eps"]

    def decode_fused(self, features: dict[str, np.ndarray], text: np.ndarray, latents: np.ndarray) -> np.ndarray:
        return self._run("unet_decoder_fused", {**features, "text_embeddings": text, "latents": latents})["z0"]

    def decode_latents(self, z0: np.ndarray) -> np.ndarray:
        """z0 to uint8 NHWC images (the graph divides by the VAE scaling factor itself)."""
        return to_uint8_images(self._run("vae_decoder", {"latents": z0})["images"])

    # -- the chain ------------------------------------------------------------------------------
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
        fused: bool | None = None,
    ) -> SampleResult:
        """One image per prompt with the one-pass sampler.

        Args:
            prompts: the prompts.
            seeds: one seed per prompt; default ``seed, seed+1, ...``.
            noise: z_T (B, C, h, w) that replaces the seeded noise.
            fused: run Eq. 11 inside ``unet_decoder_fused`` (True) or in numpy after
                ``unet_decoder`` (False); both give the same latents up to float rounding.
                Default: the graph set's own (fused; TensorRT: the decoder its engines were built with).
        """
        prompts, seeds, noise = self.prepare(prompts, seeds, seed, noise)
        self.graphs.check_batch(len(prompts))
        chain = self.graphs.preferred_chain if fused is None else ("fused" if fused else "unfused")
        self.graphs.check_chain(chain, self.manifest)
        result = run_chain(self.manifest, self.graphs, self.tokenize(prompts), noise, chain)
        return SampleResult(to_uint8_images(result.images), result.z0, seeds, result.timings, self.provider)
