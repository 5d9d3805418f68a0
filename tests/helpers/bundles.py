"""Tiny bundles exported once per test session and shared by test_export.py and test_runtime.py."""

from __future__ import annotations

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
