"""Tiny bundles exported once per test session and shared by test_export.py and test_runtime.py."""

from __future__ import annotations

import json
from pathlib import Path

_CACHE: dict[tuple, Path] = {}


def tiny_bundle(tiny_models, tmp_path_factory, variant: str = "sd21", cli: tuple[str, ...] = (), **options) -> Path:
    """The tiny ``variant`` exported with ``options`` (or through the CLI with ``cli`` args), cached."""
    from tiue_export.build.export import ExportConfig, export_bundle

    key = (variant, cli, tuple(sorted(options.items())))
    if key not in _CACHE:
        model = tiny_models(variant)
        out = tmp_path_factory.mktemp("bundles") / variant
        if cli:
            from helpers.cli import exit_code

            assert exit_code(["export", "--model", str(model), "--out", str(out), *cli]) == 0
        else:
            export_bundle(ExportConfig(model=Path(model), out=out, **options))
        _CACHE[key] = out
    return _CACHE[key]


#: the variants the parity tests cover, with the export options each one also exercises
VARIANTS = {
    "sd21": {},
    "sd15": {"external_data": "always"},
    "two-level": {"cli": ("--external-data", "never", "--batch", "1:2:4")},
}


def tiny_vae_bundle(tiny_models, tmp_path_factory) -> Path:
    """The tiny sd21 model exported with ``--vae DIR``: a two-step distill-vae decoder as the
    ``tiny`` variant of vae_decoder (what the C++ runtime and the server run with --vae tiny), cached."""
    import numpy as np
    from PIL import Image

    from tiue_export.build.export import ExportConfig, export_bundle
    from tiue_export.distill.tiny_vae import VaeDistillConfig, distill_vae

    key = ("tiny-vae",)
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("tiny-vae")
        rng = np.random.default_rng(0)
        (root / "images").mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        model = tiny_models("sd21")
        recipe = {"steps": 2, "batch_size": 2, "width": 8, "blocks": (1, 1)}
        distill_vae(VaeDistillConfig(out=str(root / "decoder"), model=str(model), images=str(root / "images"), **recipe))
        export_bundle(ExportConfig(model=Path(model), out=root / "bundle", vae=str(root / "decoder"), validate_batch=1))
        _CACHE[key] = root / "bundle"
    return _CACHE[key]


# -- manifests that every reader must refuse the same way (Python's Bundle.open, the C++ runtime) --
def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def _with(m: dict, raw: str) -> str:
    """``m`` as JSON with the placeholder string "@" replaced by the raw JSON text ``raw``."""
    return json.dumps(m).replace('"@"', raw)


def _nan(m):
    m["sampler"]["S"] = "@"
    return _with(m, "NaN"), "not valid JSON"


def _infinity(m):
    m["sampler"]["final_alpha_cumprod"] = "@"
    return _with(m, "-Infinity"), "not valid JSON"


def _overflow(m):
    m["sampler"]["E"][0] = "@"
    return _with(m, "1e999"), "not valid JSON"


def _nested_65(m):  # the object is level 1: 64 more levels make 65
    m["notes"] = "@"
    return _with(m, _nested(64)), "JSON nested deeper than 64 levels: not a tiue-export manifest"


def _nested_100000(m):
    m["notes"] = "@"
    return _with(m, _nested(100_000)), "JSON nested deeper than 64 levels: not a tiue-export manifest"


def _chain_runs_a_missing_graph(m):
    m["runtime"]["chains"]["fused"]["graphs"][2] = "ghost_decoder"
    m["runtime"]["fused"][2] = "ghost_decoder"
    return json.dumps(m), "chain fused runs graph 'ghost_decoder', which the manifest lacks: re-export the bundle"


def _chain_feeds_from_nothing(m):
    del m["runtime"]["chains"]["unfused"]["sources"]["eq11.eps"]
    return json.dumps(m), "chain unfused: nothing feeds eq11.eps: re-export the bundle"


def _runtime_list_is_not_its_chain(m):
    m["runtime"]["fused"] = m["runtime"]["unfused"]
    return json.dumps(m), "is not the graphs of chain fused"


#: edit(manifest dict) -> (manifest.json text, what the one-line refusal says), for both runtimes.
REFUSED_MANIFESTS = {f.__name__[1:]: f for f in (
    _nan, _infinity, _overflow, _nested_65, _nested_100000, _chain_runs_a_missing_graph, _chain_feeds_from_nothing,
    _runtime_list_is_not_its_chain,
)}


def nested_64(m: dict) -> str:
    """The deepest manifest both readers take: 64 levels (an unknown top-level key rides along)."""
    m["notes"] = "@"
    return _with(m, _nested(63))
