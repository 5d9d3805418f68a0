"""Where models come from: ``--model PATH`` or the built-in default."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("tiue_export")

ASSETS = Path(__file__).parent / "assets"
#: Built-in models, best first: the distilled toy student, then the toy teacher it came from.
BUILTIN = ("toy-student", "toy-teacher")


def cache_dir() -> Path:
    return Path(os.environ.get("TIUE_EXPORT_CACHE", Path.home() / ".cache" / "tiue-export"))


def default_model() -> Path:
    """The shipped default model, or (until one ships) a tiny random SD 2.1-shaped student
    created on first use in the cache directory."""
    for name in BUILTIN:
        if (ASSETS / name / "model_index.json").exists():
            return ASSETS / name
    tiny = cache_dir() / "tiny-sd21"
    if not (tiny / "model_index.json").exists():
        from .tiny import build_tiny_pipeline

        log.info("creating the tiny first-use model in %s", tiny)
        build_tiny_pipeline(tiny, "sd21")
    return tiny


def resolve_model(path: str | os.PathLike | None) -> Path:
    return Path(path) if path else default_model()
