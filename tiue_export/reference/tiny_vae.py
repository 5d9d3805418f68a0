"""Which tiny VAE decoder ``--vae tiny`` means for a model, and loading it.

A tiny decoder is a ``tiue-export distill-vae`` output: an ``AutoencoderTiny`` directory whose
``distill_vae.json`` names the VAE it was distilled from. It takes ``z0`` as the full
``vae_decoder`` graph does (its ``scaling_factor`` is 1.0) and gives images in [-1, 1], so the
same ``VaeDecoderGraph`` wraps either. Only the decoder half is meaningful.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError, ModelError
from ..files import sha256_of_weights
from .builtin import ASSETS

#: The built-in models' tiny decoder (distilled from the toy VAE that both share).
SHIPPED = ASSETS / "toy-tiny-vae"
#: A model directory may carry its own tiny decoder here.
SUBFOLDER = "vae_tiny"
RECORD = "distill_vae.json"


def vae_sha256(vae_dir: Path) -> str:
    return sha256_of_weights(vae_dir)


def resolve(model: Path, choice: str) -> Path | None:
    """The tiny decoder directory for ``--vae choice`` (``full``: None; ``tiny``: the model's
    ``vae_tiny/``, else the shipped one when the model has the toy VAE; or a directory path).
    Refuses a decoder distilled from another VAE."""
    if choice in (None, "full"):
        return None
    model = Path(model)
    if choice == "tiny":
        candidates = [model / SUBFOLDER, SHIPPED]
        found = next((c for c in candidates if (c / RECORD).is_file()), None)
        if found is None:
            raise InputError(f"{model} has no tiny VAE decoder: make one with tiue-export distill-vae --model {model} --out DIR, then pass --vae DIR")
        if found == SHIPPED and vae_sha256(model / "vae") != json.loads((SHIPPED / RECORD).read_text())["distilled_from"]["vae_sha256"]:
            raise InputError(f"{model} has no tiny VAE decoder: make one with tiue-export distill-vae --model {model} --out DIR, then pass --vae DIR")
        path = found
    else:
        path = Path(choice)
        if not (path / RECORD).is_file():
            raise InputError(f"--vae {choice}: not full, tiny or a distill-vae output directory (no {RECORD})")
    try:
        record = json.loads((path / RECORD).read_text())
        source = record["distilled_from"]["vae_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / RECORD}: not a distill-vae record ({exc})") from exc
    if source != vae_sha256(model / "vae"):
        raise InputError(f"--vae {choice}: {path} was distilled from another VAE than {model}'s (distill one for this model)")
    return path


def load(path: Path, dtype=None):
    """The ``AutoencoderTiny`` of a distill-vae directory, in eval mode without gradients."""
    import torch
    from diffusers import AutoencoderTiny

    try:
        tiny = AutoencoderTiny.from_pretrained(path, torch_dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a loadable AutoencoderTiny ({str(exc).splitlines()[0]})") from exc
    return tiny.eval().requires_grad_(False)


def provenance(path: Path) -> dict:
    """What the bundle's variant records of a distill-vae directory: the VAE it was distilled
    from and its held-out PSNR."""
    record = json.loads((Path(path) / RECORD).read_text())
    return {"distilled_from": record["distilled_from"], "held_out_psnr_db": record.get("held_out_psnr_db")}
