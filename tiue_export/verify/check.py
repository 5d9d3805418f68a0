"""Parity of every backend with the PyTorch reference, graph by graph and end to end.

For each backend the same inputs go in: per graph, the reference's own inputs (so a graph's error
is its own), and end to end, the same prompts and z_T through the backend's whole chain. Every
output is compared (max abs, relative L2, cosine, PSNR for images, NaN/Inf) against the graph's
tolerance from the bundle manifest (the graph specs) before anything is judged.

A bundle whose ``vae_decoder`` carries decoder rows of the variant table (:mod:`tiue_export.variants`,
e.g. the tiny VAE of ``export --vae tiny``) has each checked too, on the reference's z0 against the
PyTorch decoder it was exported from; ``--vae NAME`` checks the whole chain as ``infer --vae NAME``
runs it (that decoder's graph row and the end to end through it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..compare import Comparison, compare_arrays, compare_outputs
from ..errors import InputError, ModelError, TiueError
from ..specs import Tolerance
from ..variants import VAE_CHOICES, VARIANTS, has_variant, reference_key

log = logging.getLogger("tiue_export")

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
    # auto: PyTorch where torch and the source model are here, else the reference export stored
    reference: str = "auto"
    device: str | None = None  # where the PyTorch reference runs (fp32): cpu, cuda[:N], auto
    # auto: also each decoder variant's graph the bundle has; a variant (tiny): the chain through it
    # (what infer --vae tiny runs); full: the full decoder only
    vae: str = "auto"


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
def reference_chain(pipe, manifest, ids: np.ndarray, noise: np.ndarray) -> dict:
    """Every intermediate of the PyTorch one-pass chain for token ids and z_T (the executor on
    the reference's graphs, Eq. 11 in float64)."""
    from ..executor import run_chain

    result = run_chain(manifest, pipe.graphs(), ids, noise, "unfused", keep=True, sum_dtype=np.float64)
    v = result.values
    return _reference_dict(manifest, v, "eq11.z0")


def _reference_dict(manifest, v: dict, z0_key: str) -> dict:
    from ..sampling import to_uint8_images

    images = v["vae_decoder.images"]
    return {
        "ids": v["inputs.input_ids"],
        "noise": v["inputs.noise"],
        "text_embeddings": v["text_encoder.text_embeddings"],
        "features": {n: v[f"unet_encoder.{n}"] for n in manifest.graphs["unet_encoder"].output_names},
        "eps": v["unet_decoder.eps"],
        "z0": v[z0_key],
        "images": images,
        "images_uint8": to_uint8_images(images),
    }


def with_decoder_images(ref: dict, variant: str, images: np.ndarray) -> dict:
    """``ref`` with the images of decoder ``variant`` of its z0 (``ref["decoders"][variant]``)."""
    from ..sampling import to_uint8_images

    decoders = {**ref.get("decoders", {}), variant: {"images": images, "images_uint8": to_uint8_images(images)}}
    return {**ref, "decoders": decoders}


def through_decoder(ref: dict, variant: str) -> dict:
    """The reference of the chain through decoder ``variant``: its images in place of the full VAE's."""
    return {**ref, **ref["decoders"][variant]}


def decoder_variants(manifest) -> list[str]:
    """The variant table's decoder rows this bundle carries."""
    return [name for name in VAE_CHOICES[1:] if has_variant(manifest, name)]


def stored_reference(bundle) -> tuple[dict, list[str]]:
    """The PyTorch reference ``export`` stored in the bundle (``reference.npz``) and its prompts:
    what ``check`` compares with where torch or the source model is not at hand."""
    from ..bundle import REFERENCE

    path = bundle.path / REFERENCE
    if not path.is_file():
        raise ModelError(f"bundle {bundle.path} has no {REFERENCE}: re-export it, or check where torch and the source model are installed")
    with np.load(path, allow_pickle=False) as data:
        values = {k: data[k] for k in data.files}
    prompts = [str(p) for p in values.pop("prompts")]
    ref = _reference_dict(bundle.manifest, values, "unet_decoder_fused.z0")
    for name in decoder_variants(bundle.manifest):
        if reference_key(name) in values:  # exported with this decoder (older bundles lack it)
            ref = with_decoder_images(ref, name, values[reference_key(name)])
    return ref, prompts


def decoder_reference(pipe, manifest, model, ref: dict, variant: str) -> dict:
    """``ref`` with the images of the PyTorch decoder the bundle's ``variant`` was exported from
    (the directory the variant records, else export's ``--vae``) on ``ref``'s z0."""
    import torch

    from ..reference.torch_graphs import VaeDecoderGraph

    row = VARIANTS[variant]
    entry = manifest.graphs["vae_decoder"].variants[variant]
    source = entry.extra.get("source") or manifest.export_config.get("vae") or variant
    try:
        module = VaeDecoderGraph(row.torch_decoder(Path(model), source), baked=False).to(pipe.device)
    except InputError as exc:
        why = f"the bundle's {variant} VAE decoder came from {source}, not usable here ({exc})"
        raise ModelError(f"{why}: check with --vae full, or --reference bundle") from exc
    with torch.no_grad():
        images = module(torch.from_numpy(ref["z0"]).to(pipe.device)).float().cpu().numpy()
    return with_decoder_images(ref, variant, images)


# -- backends -------------------------------------------------------------------------------------
def _tolerance(manifest, graph: str, precision: str, variant: str | None = "int8") -> Tolerance:
    """The bound for ``graph`` on a backend whose results are judged at ``precision`` (the
    variant's own, as calibrate measured it, where it records one)."""
    entry = manifest.graphs[graph]
    if precision == "int8" and graph.startswith("unet"):
        variant = entry.variants.get(variant or "int8")
        return variant.tolerance if variant is not None and variant.tolerance is not None else INT8_TOL
    if precision == "bf16":
        return BF16_TOL
    return entry.tolerance


def graph_tolerance(backend, manifest, graph: str) -> Tolerance:
    """The bound for ``graph`` of ``manifest`` (the backend's view of the bundle) on ``backend``."""
    if backend.engine == "openvino" and backend.variant and backend.variant not in manifest.graphs[graph].variants:
        # graphs without the variant run in OpenVINO's default compute precision (bf16 here)
        from ..backends import REGISTRY

        return _tolerance(manifest, graph, REGISTRY["openvino"].precision(manifest))
    return _tolerance(manifest, graph, backend.precision(manifest), backend.variant)


def check_backend(backend, graphs, tokenize, manifest, ref: dict, vae: str = "full", decoders: dict | None = None) -> BackendReport:
    """Per-graph parity on the reference's inputs, then the backend's own chain end to end.

    Args:
        vae: a decoder variant (``tiny``): ``graphs`` decode with it and ``ref`` is
            :func:`through_decoder`'s (the VAE row is named ``vae_decoder.tiny``); ``auto`` or
            ``full``: the full decoder.
        decoders: variant -> the backend's graphs of the bundle's decoder variant: each
            ``vae_decoder`` gets its own row against ``ref["decoders"][variant]``.
    """
    from ..executor import run_chain
    from ..sampling import to_uint8_images

    precision = backend.precision(manifest)
    report = BackendReport(backend.name, precision, True)
    noise, text = ref["noise"], ref["text_embeddings"]

    def run(graph, feed):
        return graphs.runner(graph).infer(feed)

    def tol(g):
        return graph_tolerance(backend, manifest, g)

    ids = tokenize() if tokenize is not None else ref["ids"]
    report.graphs.append(Comparison("tokenizer", [compare_arrays(ref["ids"], ids, EXACT, name="input_ids")]))
    out = run("text_encoder", {"input_ids": ref["ids"]})
    report.graphs.append(compare_outputs("text_encoder", {"text_embeddings": text}, out, tol("text_encoder")))
    out = run("unet_encoder", {"latents": noise, "text_embeddings": text})
    report.graphs.append(compare_outputs("unet_encoder", ref["features"], out, tol("unet_encoder")))
    # An engine set may hold only one decoder (TensorRT builds the fused or the K-batched one).
    has = set(graphs.factories)
    if "unet_decoder" in has:
        out = run("unet_decoder", {**ref["features"], "text_embeddings": text})
        report.graphs.append(compare_outputs("unet_decoder", {"eps": ref["eps"]}, out, tol("unet_decoder")))
    if "unet_decoder_fused" in has:
        out = run("unet_decoder_fused", {**ref["features"], "text_embeddings": text, "latents": noise})
        report.graphs.append(compare_outputs("unet_decoder_fused", {"z0": ref["z0"]}, out, tol("unet_decoder_fused")))
    out = run("vae_decoder", {"latents": ref["z0"]})
    name = f"vae_decoder.{vae}" if vae in VARIANTS else "vae_decoder"
    report.graphs.append(compare_outputs(name, {"images": ref["images"]}, out, tol("vae_decoder"), data_range={"images": 2.0}))
    for variant, variant_graphs in (decoders or {}).items():
        out = variant_graphs.runner("vae_decoder").infer({"latents": ref["z0"]})
        expected = {"images": ref["decoders"][variant]["images"]}
        report.graphs.append(compare_outputs(f"vae_decoder.{variant}", expected, out, tol("vae_decoder"), data_range={"images": 2.0}))

    # End to end: the backend's own chain from the same token ids and z_T.
    chain = "fused" if "unet_decoder_fused" in has else "unfused"
    result = run_chain(manifest, graphs, ids, noise, chain)
    out = to_uint8_images(result.images)
    report.images = out
    report.end_to_end = Comparison(
        "end_to_end",
        [
            compare_arrays(ref["z0"], result.z0, tol("unet_decoder_fused") if precision == "fp32" else None, name="z0"),
            compare_arrays(ref["images_uint8"], out, None, name="images_uint8", data_range=255.0, min_psnr=MIN_PSNR[precision]),
        ],
    )
    return report


def check_coefficients(graphs, manifest, ref: dict) -> Comparison:
    """The fused decoder's baked Eq. 11 against the manifest's S and E: one probe of both
    decoders on the reference's features, the K-batched one summed with the manifest's numbers."""
    from ..schedule import combine_one_pass

    feed = {**ref["features"], "text_embeddings": ref["text_embeddings"]}
    eps = graphs.runner("unet_decoder").infer(feed)["eps"]
    fused = graphs.runner("unet_decoder_fused").infer({**feed, "latents": ref["noise"]})["z0"]
    s = manifest.sampler
    summed = combine_one_pass(ref["noise"].astype(np.float64), eps.astype(np.float64), s.S, s.E)
    return Comparison("eq11_coefficients", [compare_arrays(summed, fused, manifest.graphs["unet_decoder_fused"].tolerance, name="z0")])


def check_torch_determinism(pipe, manifest, ref: dict) -> BackendReport:
    """``torch``: the reference run again must give bit-identical outputs (determinism)."""
    again = reference_chain(pipe, manifest, ref["ids"], ref["noise"])
    report = BackendReport("torch", "fp32", True)
    report.graphs.append(compare_outputs("unet", {"eps": ref["eps"]}, {"eps": again["eps"]}, EXACT))
    report.end_to_end = Comparison(
        "end_to_end", [compare_arrays(ref["images_uint8"], again["images_uint8"], EXACT, name="images_uint8", data_range=255.0)]
    )
    report.images = again["images_uint8"]
    return report


def _torch_reference(cfg: CheckConfig, bundle):
    """``(pipe, reference, prompts)`` from the source model, or None where torch or the model is missing."""

    model = cfg.model or bundle.manifest.source.get("model")
    if cfg.model and not Path(cfg.model).exists():
        raise ModelError(f"no such source model {cfg.model}: give the model the bundle was exported from with --model PATH")
    if cfg.reference == "bundle":
        return None
    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch or not model or not Path(model).exists():
        if cfg.reference == "torch":
            why = "torch is not installed" if not have_torch else f"the bundle's source model {model!r} is not here: give it with --model PATH"
            raise ModelError(f"--reference torch: {why}")
        return None
    from ..reference.pipeline import check_model_dir, load_pipeline
    from ..sampling import initial_noise

    check_model_dir(Path(model), "--model is the PyTorch model the bundle was exported from; the bundle is check's argument")

    m = bundle.manifest
    from ..reference.device import parse_device

    pipe = load_pipeline(model, k=m.k, device=parse_device(cfg.device))  # fp32 on any device: the reference
    if list(pipe.schedule.timesteps) != list(m.sampler.timesteps):
        raise ModelError(f"{model} gives timesteps {list(pipe.schedule.timesteps)}, the bundle has {list(m.sampler.timesteps)}")
    prompts = list(cfg.prompts)
    noise = initial_noise(range(cfg.seed, cfg.seed + len(prompts)), m.latent)
    ref = reference_chain(pipe, m, pipe.tokenize(prompts), noise)
    for name in decoder_variants(m) if cfg.vae != "full" else ():
        if cfg.vae in ("auto", name):
            ref = decoder_reference(pipe, m, model, ref, name)
    return pipe, ref, prompts


def check_options(cfg: CheckConfig) -> None:
    """Refuse bad options before any bundle or model is read."""
    from .. import backends

    if not cfg.prompts:
        raise InputError("no prompt given")
    if cfg.reference not in ("auto", "torch", "bundle"):
        raise InputError(f"unknown --reference {cfg.reference!r}: use auto, torch or bundle")
    choices = ("auto", *VAE_CHOICES)
    if cfg.vae not in choices:
        raise InputError(f"unknown --vae {cfg.vae!r}: use {', '.join(choices[:-1])} or {choices[-1]}")
    for name in cfg.backends or ():
        backends.get(name)


def decoder_rows(cfg: CheckConfig, bundle, ref: dict) -> list[str]:
    """The decoder variants that get their own graph row (``--vae auto``: each the bundle has and
    the reference holds images of)."""
    referenced = ref.get("decoders", {})
    decoding = cfg.vae if cfg.vae in VARIANTS else None
    if decoding and decoding not in referenced:
        raise ModelError(f"bundle {bundle.path}'s reference.npz has no {decoding} decoder images: re-export it, or check with torch")
    rows = [name for name in decoder_variants(bundle.manifest) if cfg.vae == "auto"]
    for name in rows:
        if name not in referenced:
            log.warning("the %s VAE decoder is not checked: the bundle's reference.npz predates it (re-export it, or check with torch)", name)
    return [name for name in rows if name in referenced]


def torch_row(name: str, pipe, decoding: str | None, manifest, ref: dict) -> BackendReport:
    """A torch registry name's row: the reference's determinism, or why it is not checked."""
    if pipe is None:
        return BackendReport(name, "", False, reason="torch or the source model is not here")
    if name != "torch":
        return BackendReport(name, "", False, reason="check compares bundle backends with the fp32 reference")
    if decoding:
        return BackendReport(name, "", False, reason=f"--vae {decoding} checks the bundle's graphs (torch: --vae full)")
    return check_torch_determinism(pipe, manifest, ref)


def bundle_row(backend, bundle, decoding: str | None, rows: list[str], tokenize, ref: dict, cfg: CheckConfig, state: dict) -> BackendReport:
    """A bundle backend's row; the first backend that runs both exported decoders also checks
    the fused decoder's baked Eq. 11 (``state["coefficients"]``)."""
    why = backend.unavailable(bundle.manifest)
    if why:
        return BackendReport(backend.name, "", False, reason=why)
    view = bundle.with_variant(decoding)
    try:
        graphs = backend.graphs(view)
        # a decoder row runs where the table says (TensorRT's engines are built from the graphs as exported)
        decoders = {v: backend.graphs(bundle.with_variant(v)) for v in rows if backend.engine in VARIANTS[v].engines}
    except InputError:
        raise
    except TiueError as exc:
        return BackendReport(backend.name, "", False, reason=str(exc))
    with graphs, contextlib.ExitStack() as stack:
        for opened in decoders.values():
            stack.enter_context(opened)
        seen = view.with_variant(backend.variant).manifest
        report = check_backend(backend, graphs, tokenize, seen, through_decoder(ref, decoding) if decoding else ref, cfg.vae, decoders)
        if state.get("coefficients") is None and backend.variant is None and {"unet_decoder", "unet_decoder_fused"} <= set(graphs.factories):
            state["coefficients"] = check_coefficients(graphs, bundle.manifest, ref)
            if not state["coefficients"]:
                report.graphs.append(state["coefficients"])
    return report


def run_check(cfg: CheckConfig) -> tuple[list[BackendReport], dict]:
    """Check every requested backend; returns the reports and the reference."""
    from .. import backends
    from ..bundle import Bundle
    from ..runtime.pipeline import BundleTokenizer

    check_options(cfg)
    bundle = Bundle.open(cfg.bundle)
    decoding = cfg.vae if cfg.vae in VARIANTS else None  # the chain checked decodes with this variant
    if decoding:
        bundle.with_variant(decoding)  # no such decoder: the one-line fix, before anything loads
    torch_ref = _torch_reference(cfg, bundle)
    if torch_ref is None:
        pipe = None
        ref, prompts = stored_reference(bundle)
        log.info("comparing with the PyTorch reference stored in the bundle (prompts %s)", prompts)
    else:
        pipe, ref, prompts = torch_ref
    rows = decoder_rows(cfg, bundle, ref)
    tokenizer = BundleTokenizer(bundle)
    # --vae NAME checks the bundle's graphs through that decoder; torch's row is a determinism check
    requested = list(cfg.backends or ()) or [b for b in backends.available(bundle.manifest) if b != "torch" or (pipe is not None and not decoding)]
    reports, state = [], {}
    for name in requested:
        log.info("checking %s", name)
        backend = backends.get(name)
        if backend.engine == "torch":
            reports.append(torch_row(name, pipe, decoding, bundle.manifest, ref))
        else:
            reports.append(bundle_row(backend, bundle, decoding, rows, lambda: tokenizer(prompts), ref, cfg, state))
    backend_ref = through_decoder(ref, decoding) if decoding else ref
    backend_ref["prompts"] = prompts
    backend_ref["coefficients"] = state.get("coefficients")
    return reports, backend_ref


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
    hint = x.hint()
    return f"{x.name}: {x.reason} ({hint})" if hint else f"{x.name}: {x.reason}"


def write_json(reports: Sequence[BackendReport], cfg: CheckConfig, path: Path, coefficients: Comparison | None = None) -> None:
    from ..files import atomic_path

    data = {"config": asdict(cfg), "ok": all(r.ok for r in reports if r.available), "backends": [r.to_dict() for r in reports]}
    if coefficients is not None:
        data["eq11_coefficients"] = coefficients.to_dict()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def write_image_grid(reports: Sequence[BackendReport], ref: dict, prompts: Sequence[str], path: Path, scale: int = 4) -> None:
    """A PNG: per prompt, the reference image, then each backend's image and its |difference| x 8."""
    from PIL import Image, ImageDraw

    from ..files import atomic_path

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
