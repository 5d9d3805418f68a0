"""Parity of every backend with the PyTorch reference, graph by graph and end to end.

For each backend the same inputs go in: per graph, the reference's own inputs (so a graph's error
is its own), and end to end, the same prompts and z_T through the backend's whole chain. Every
output is compared (max abs, relative L2, cosine, PSNR for images, NaN/Inf) against the graph's
tolerance from the bundle manifest (the graph specs) before anything is judged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .compare import Comparison, compare_arrays, compare_outputs
from .errors import InputError, ModelError, TiueError
from .specs import Tolerance

log = logging.getLogger("tiue_export")

BACKENDS = (
    "torch",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",  # the CPU's default precision: bf16 where it has bf16 units (AMX, AVX-512-BF16)
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "tensorrt-fp16",
    "tensorrt-int8",
)

#: End-to-end image PSNR (uint8, dB) each precision must reach against the fp32 PyTorch images.
MIN_PSNR = {"fp32": 40.0, "fp16": 30.0, "bf16": 30.0, "int8": 30.0}
#: int8 graphs: activations round to 8 bits, so elementwise bounds are meaningless; judge
#: direction (cosine) per graph and the image by PSNR.
INT8_TOL = Tolerance(atol=float("inf"), rtol=float("inf"), min_cosine=0.99)
#: bf16 compute (8-bit mantissa) on fp32 graphs: the same kind of bound, a little tighter.
BF16_TOL = Tolerance(atol=float("inf"), rtol=float("inf"), min_cosine=0.995)

#: Bit-exact: zero elementwise error (the cosine bound is implied by it).
EXACT = Tolerance(atol=0.0, rtol=0.0, min_cosine=0.0)

DEFAULT_PROMPTS = ("a photo of a cat", "a small red triangle on a blue background")


@dataclass(frozen=True)
class CheckConfig:
    """What ``tiue-export check`` compares."""

    bundle: str
    backends: tuple[str, ...] | None = None  # None: every backend available here
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seed: int = 0
    model: str | None = None  # the PyTorch source model; default: the one the manifest names


@dataclass
class BackendReport:
    backend: str
    precision: str
    available: bool
    reason: str = ""
    graphs: list[Comparison] = field(default_factory=list)
    end_to_end: Comparison | None = None
    images: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.available and all(self.graphs) and bool(self.end_to_end)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "available": self.available,
            "reason": self.reason,
            "ok": self.ok,
            "graphs": [c.to_dict() for c in self.graphs],
            "end_to_end": self.end_to_end.to_dict() if self.end_to_end else None,
        }


# -- the reference ------------------------------------------------------------------------------
def reference(pipe, ids: np.ndarray, noise: np.ndarray, schedule) -> dict:
    """Every intermediate of the PyTorch one-pass pipeline for token ids and z_T."""
    import torch

    from .sampling import to_uint8_images
    from .schedule import combine_one_pass

    with torch.no_grad():
        text = pipe.text_encoder(torch.from_numpy(ids))[0]
        z = torch.from_numpy(noise)
        feats = pipe.student.encode(z, text)
        eps = pipe.student.decode(feats, text)
        z0 = combine_one_pass(z.double(), eps.double(), schedule["S"], schedule["E"]).float()
        images = pipe.vae.decode(z0 / pipe.vae.config.scaling_factor).sample
    names = pipe.student.feature_names()
    images = images.numpy()
    return {
        "ids": ids,
        "text_embeddings": text.numpy(),
        "features": {n: f.numpy() for n, f in zip(names, feats)},
        "eps": eps.numpy(),
        "z0": z0.numpy(),
        "images": images,
        "images_uint8": to_uint8_images(images),
    }


# -- backends -------------------------------------------------------------------------------------
class PipelineStages:
    """A runtime pipeline (ONNX Runtime's or TensorRT's: they share one interface) as the stages
    check drives: ``tokenize``, ``text``, ``encode``, ``decode``, ``decode_fused``, ``vae``.

    ``graphs`` names the decoders the backend has (a TensorRT engine set holds only one).
    """

    def __init__(self, pipe, graphs=None, compute: str = "fp32"):
        self.pipe = pipe
        self.compute = compute  # what graphs without a quantized variant run in (bf16 on OpenVINO's default)
        self.graphs = tuple(graphs) if graphs else ("text_encoder", "unet_encoder", "unet_decoder", "unet_decoder_fused", "vae_decoder")

    def tokenize(self, prompts):
        return self.pipe.tokenize(prompts)

    def text(self, ids):
        return self.pipe.runner("text_encoder").infer({"input_ids": ids})["text_embeddings"]

    def encode(self, latents, text):
        return self.pipe.encode(latents, text)

    def decode(self, features, text):
        return self.pipe.decode(features, text)

    def decode_fused(self, features, text, latents):
        return self.pipe.decode_fused(features, text, latents)

    def vae(self, z0):
        return self.pipe.runner("vae_decoder").infer({"latents": z0})["images"]

    def close(self):
        self.pipe.close()


def ort_stages(bundle_path, precision: str | None) -> PipelineStages:
    from .runtime import Pipeline

    return PipelineStages(Pipeline.load(bundle_path, precision=precision, verify=False))


def trt_stages(bundle_path, precision: str | None, device: int = 0) -> PipelineStages:
    """The ``precision`` engines of a bundle (raises like ``TrtPipeline.load``)."""
    from .trt.runtime import TrtPipeline

    pipe = TrtPipeline.load(bundle_path, precision, verify=False, device=device)
    return PipelineStages(pipe, graphs=pipe.entry["pipeline"])


def openvino_stages(bundle_path, word: str | None) -> PipelineStages:
    """The bundle on OpenVINO for ``openvino[-WORD]`` (WORD: fp32, bf16, fp16 or int8)."""
    from .runtime import Pipeline, openvino_default_precision, openvino_options

    options = openvino_options(word)
    pipe = Pipeline.load(bundle_path, verify=False, **options)
    return PipelineStages(pipe, compute=options["inference_precision"] or openvino_default_precision())


def _open_backend(name: str, bundle_path: Path, manifest: dict):
    """``(stages, precision)`` for a backend, or raise ``TiueError`` saying why it is unavailable."""
    if name.startswith("openvino"):
        from .runtime import openvino_default_precision

        word = name.split("-", 1)[1] if "-" in name else None
        if word == "int8":
            if not _has_variant(manifest, "int8"):
                raise TiueError("no int8 graphs in this bundle: run tiue-export calibrate BUNDLE first")
            return openvino_stages(bundle_path, "int8"), "int8"
        return openvino_stages(bundle_path, word), word or openvino_default_precision()
    if name == "onnxruntime":
        return ort_stages(bundle_path, None), manifest.get("precision", "fp32")
    if name == "onnxruntime-int8":
        if not _has_variant(manifest, "int8"):
            raise TiueError("no int8 graphs in this bundle: run tiue-export calibrate BUNDLE first")
        return ort_stages(bundle_path, "int8"), "int8"
    if name.startswith("tensorrt-"):
        precision = name.split("-", 1)[1]
        return trt_stages(bundle_path, precision), precision
    raise InputError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")


def _has_variant(manifest: dict, precision: str) -> bool:
    return any(precision in (g.get("variants") or {}) for g in manifest.get("graphs", {}).values())


def _tolerance(manifest: dict, graph: str, precision: str, compute: str = "fp32") -> Tolerance:
    """The bound for ``graph`` on a backend of ``precision`` whose unquantized graphs run in ``compute``."""
    entry = manifest["graphs"][graph]
    if precision == "int8" and graph.startswith("unet"):
        variant = (entry.get("variants") or {}).get("int8", {})
        return Tolerance.from_dict(variant["tolerance"]) if "tolerance" in variant else INT8_TOL
    if "bf16" in (precision, compute):
        return BF16_TOL
    return Tolerance.from_dict(entry["tolerance"])


def check_backend(name: str, stages, precision: str, manifest: dict, ref: dict, prompts, noise) -> BackendReport:
    """Per-graph parity on the reference's inputs, then the backend's own chain end to end."""
    from .sampling import sample_one_pass, to_uint8_images

    report = BackendReport(name, precision, True)
    tol = lambda g: _tolerance(manifest, g, precision, getattr(stages, "compute", "fp32"))  # noqa: E731
    ids = stages.tokenize(prompts)
    report.graphs.append(
        Comparison("tokenizer", [compare_arrays(ref["ids"], ids, EXACT, name="input_ids")])
    )
    report.graphs.append(compare_outputs("text_encoder", {"text_embeddings": ref["text_embeddings"]}, {"text_embeddings": stages.text(ref["ids"])}, tol("text_encoder")))
    feats = stages.encode(noise, ref["text_embeddings"])
    report.graphs.append(compare_outputs("unet_encoder", ref["features"], feats, tol("unet_encoder")))
    # An engine set may hold only one decoder (TensorRT builds the fused or the K-batched one).
    graphs = set(getattr(stages, "graphs", ("unet_decoder", "unet_decoder_fused")))
    if "unet_decoder" in graphs:
        eps = stages.decode(ref["features"], ref["text_embeddings"])
        report.graphs.append(compare_outputs("unet_decoder", {"eps": ref["eps"]}, {"eps": eps}, tol("unet_decoder")))
    if "unet_decoder_fused" in graphs:
        z0 = stages.decode_fused(ref["features"], ref["text_embeddings"], noise)
        report.graphs.append(compare_outputs("unet_decoder_fused", {"z0": ref["z0"]}, {"z0": z0}, tol("unet_decoder_fused")))
    images = stages.vae(ref["z0"])
    report.graphs.append(
        compare_outputs("vae_decoder", {"images": ref["images"]}, {"images": images}, tol("vae_decoder"), data_range={"images": 2.0})
    )

    # End to end: the backend's own chain from the same prompts and z_T.
    text = stages.text(ids)
    if "unet_decoder_fused" in graphs:
        z0 = stages.decode_fused(stages.encode(noise, text), text, noise)
    else:
        s = manifest["sampler"]
        z0, _ = sample_one_pass(noise, text, stages.encode, stages.decode, float(s["S"]), [float(e) for e in s["E"]])
    out = to_uint8_images(stages.vae(np.ascontiguousarray(z0, dtype=np.float32)))
    report.images = out
    report.end_to_end = Comparison(
        "end_to_end",
        [
            compare_arrays(ref["z0"], z0, tol("unet_decoder_fused") if precision == "fp32" else None, name="z0"),
            compare_arrays(ref["images_uint8"], out, None, name="images_uint8", data_range=255.0, min_psnr=MIN_PSNR[precision]),
        ],
    )
    return report


def check_torch_determinism(pipe, ref: dict, schedule, noise) -> BackendReport:
    """``torch``: the reference run again must give bit-identical outputs (determinism)."""
    again = reference(pipe, ref["ids"], noise, schedule)
    exact = EXACT
    report = BackendReport("torch", "fp32", True)
    report.graphs.append(compare_outputs("unet", {"eps": ref["eps"]}, {"eps": again["eps"]}, exact))
    report.end_to_end = Comparison(
        "end_to_end", [compare_arrays(ref["images_uint8"], again["images_uint8"], exact, name="images_uint8", data_range=255.0)]
    )
    report.images = again["images_uint8"]
    return report


def available_backends(manifest: dict) -> list[str]:
    """The backends this machine and bundle can run."""
    out = ["torch", "onnxruntime"]
    if _has_variant(manifest, "int8"):
        out.append("onnxruntime-int8")
    if importlib.util.find_spec("openvino") is not None:
        out.append("openvino")
        if _has_variant(manifest, "int8"):
            out.append("openvino-int8")
    engines = manifest.get("engines") or {}
    if engines:
        from .trt.checks import require_tensorrt_gpu

        try:
            require_tensorrt_gpu()
        except TiueError as exc:
            log.info("TensorRT engines not checked: %s", exc)
        else:
            out += [f"tensorrt-{p}" for p in ("fp16", "int8") if p in engines]
    return out


def run_check(cfg: CheckConfig) -> tuple[list[BackendReport], dict]:
    """Check every requested backend; returns the reports and the reference."""
    from .pipeline import load_pipeline
    from .runtime import Bundle
    from .sampling import initial_noise

    bundle = Bundle.open(cfg.bundle)
    manifest = bundle.manifest
    model = cfg.model or manifest.get("source", {}).get("model")
    if not model or not Path(model).exists():
        raise ModelError(f"the bundle's source model {model!r} is not here: give it with --model PATH")
    sampler = manifest["sampler"]
    pipe = load_pipeline(model, k=int(sampler["k"]))
    if list(pipe.schedule.timesteps) != list(sampler["timesteps"]):
        raise ModelError(f"{model} gives timesteps {list(pipe.schedule.timesteps)}, the bundle has {sampler['timesteps']}")
    prompts = list(cfg.prompts)
    if not prompts:
        raise InputError("no prompt given")
    lat = manifest["latent"]
    noise = initial_noise(range(cfg.seed, cfg.seed + len(prompts)), (lat["channels"], lat["height"], lat["width"]))
    ids = pipe.tokenize(prompts)
    ref = reference(pipe, ids, noise, sampler)

    requested = list(cfg.backends) if cfg.backends else available_backends(manifest)
    for name in requested:
        if name not in BACKENDS:
            raise InputError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    reports = []
    for name in requested:
        log.info("checking %s", name)
        if name == "torch":
            reports.append(check_torch_determinism(pipe, ref, sampler, noise))
            continue
        try:
            stages, precision = _open_backend(name, bundle.path, manifest)
        except InputError:
            raise
        except TiueError as exc:
            reports.append(BackendReport(name, "", False, reason=str(exc)))
            continue
        try:
            reports.append(check_backend(name, stages, precision, manifest, ref, prompts, noise))
        finally:
            stages.close()
    return reports, ref


def table(reports: Sequence[BackendReport]) -> str:
    """The terminal summary: one line per graph and backend with its worst numbers."""
    lines = [f"{'backend':<18}{'graph':<20}{'max_abs':>10}{'rel_l2':>10}{'cosine':>12}{'psnr':>8}  result"]
    for r in reports:
        if not r.available:
            lines.append(f"{r.backend:<18}{'-':<20}{'':>10}{'':>10}{'':>12}{'':>8}  unavailable: {r.reason}")
            continue
        for comp in r.graphs + ([r.end_to_end] if r.end_to_end else []):
            worst = max(comp.results, key=lambda x: (not x.ok, x.rel_l2 if np.isfinite(x.rel_l2) else np.inf))
            ps = f"{worst.psnr:.1f}" if worst.psnr is not None and np.isfinite(worst.psnr) else ("inf" if worst.psnr else "")
            status = "ok" if comp else "FAIL " + "; ".join(_failure(x) for x in comp.failures)
            lines.append(f"{r.backend:<18}{comp.name:<20}{worst.max_abs:>10.3g}{worst.rel_l2:>10.3g}{worst.cosine:>12.7f}{ps:>8}  {status}")
    return "\n".join(lines)


def _failure(x) -> str:
    need = x.needed
    if not need:
        return f"{x.name}: {x.reason}"
    return (
        f"{x.name}: {x.reason} (would need atol>={need['atol']:.3g} or rtol>={need['rtol']:.3g}, "
        f"min_cosine<={need['min_cosine']:.7f})"
    )


def write_json(reports: Sequence[BackendReport], cfg: CheckConfig, path: Path) -> None:
    from .io import atomic_path

    data = {"config": asdict(cfg), "ok": all(r.ok for r in reports if r.available), "backends": [r.to_dict() for r in reports]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def write_image_grid(reports: Sequence[BackendReport], ref: dict, prompts: Sequence[str], path: Path, scale: int = 4) -> None:
    """A PNG: per prompt, the reference image, then each backend's image and its |difference| x 8."""
    from PIL import Image, ImageDraw

    from .io import atomic_path

    shown = [r for r in reports if r.available and r.images is not None]
    ref_img = ref["images_uint8"]
    n, h, w, _ = ref_img.shape
    cw, ch = w * scale, h * scale
    cols = 1 + 2 * len(shown)
    label_h = 14
    canvas = Image.new("RGB", (cols * cw, label_h + n * ch), "white")
    draw = ImageDraw.Draw(canvas)
    labels = ["reference"] + [x for r in shown for x in (r.backend, "|diff| x8")]
    for c, text in enumerate(labels):
        draw.text((c * cw + 2, 1), text[: max(4, cw // 6)], fill="black")

    def paste(arr, c, row):
        im = Image.fromarray(arr).resize((cw, ch), Image.NEAREST)
        canvas.paste(im, (c * cw, label_h + row * ch))

    for i in range(n):
        paste(ref_img[i], 0, i)
        for j, r in enumerate(shown):
            paste(r.images[i], 1 + 2 * j, i)
            diff = np.clip(np.abs(r.images[i].astype(np.int16) - ref_img[i].astype(np.int16)) * 8, 0, 255).astype(np.uint8)
            paste(diff, 2 + 2 * j, i)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
