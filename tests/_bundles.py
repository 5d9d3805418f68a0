"""Tiny bundles exported once per test session and shared by test_export.py and test_runtime.py."""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[tuple, Path] = {}


def tiny_bundle(tiny_models, tmp_path_factory, variant: str = "sd21", cli: tuple[str, ...] = (), **options) -> Path:
    """The tiny ``variant`` exported with ``options`` (or through the CLI with ``cli`` args), cached."""
    from tiue_export.export import ExportConfig, export_bundle

    key = (variant, cli, tuple(sorted(options.items())))
    if key not in _CACHE:
        model = tiny_models(variant)
        out = tmp_path_factory.mktemp("bundles") / variant
        if cli:
            from tiue_export.cli import main

            with pytest.raises(SystemExit) as exc:
                main(["export", "--model", str(model), "--out", str(out), *cli])
                raise SystemExit(0)
            assert (exc.value.code or 0) == 0
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
