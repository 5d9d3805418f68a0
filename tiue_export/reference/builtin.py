"""Where models come from: ``--model PATH`` or the built-in default."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: Built-in models, best first: the distilled toy student, then the toy teacher it came from.
BUILTIN = ("toy-student", "toy-teacher")


def cache_dir() -> Path:
    return Path(os.environ.get("TIUE_EXPORT_CACHE", Path.home() / ".cache" / "tiue-export"))


def default_model() -> Path:
    """The shipped default model: the distilled toy student, else the toy teacher."""
    for name in BUILTIN:
        if (ASSETS / name / "model_index.json").exists():
            return ASSETS / name
    from ..errors import ModelError

    raise ModelError(f"the built-in model is missing from this install ({ASSETS}/{{{','.join(BUILTIN)}}}): reinstall tiue-export, or pass --model PATH")


def resolve_model(path: str | os.PathLike | None) -> Path:
    return Path(path) if path else default_model()
