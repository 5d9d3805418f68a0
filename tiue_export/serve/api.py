"""The HTTP API of ``tiue-export serve``, without Ray: request parsing and response bodies.

``POST /v1/images`` takes JSON ``{"prompt": TEXT}`` or ``{"prompts": [TEXT, ...]}`` with optional
``seed`` (default 0), ``num_images`` (per prompt, default 1) and ``response`` (``png`` or ``json``;
default ``png`` for one image, else ``json``). Image j of a prompt uses ``seed + j``, as
``tiue-export infer`` does, so a request and an infer run with the same words give the same files.
``vae`` (optional) picks the VAE decoder variant among those the server draws with
(``GET /v1/model``'s ``vae_variants``), as infer's ``--vae``.
A request the server cannot take gets 400 and ``{"error": {"field": NAME, "message": TEXT}}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from ..prompts import prompt_problem
from ..sampling import SEED_MAX

FIELDS = ("prompt", "prompts", "seed", "num_images", "response", "vae")
RESPONSES = ("png", "json")


class RequestError(ValueError):
    """A malformed request: 400, naming the field at fault (None: the body as a whole)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ImageRequest:
    """A checked ``POST /v1/images`` body."""

    prompts: tuple[str, ...]
    seed: int = 0
    num_images: int = 1
    response: str = "png"
    vae: str | None = None  # None: the server's own

    @property
    def jobs(self) -> list[tuple]:
        """(prompt, seed[, vae]) per image, in infer's order: every image of the first prompt first."""
        vae = () if self.vae is None else (self.vae,)
        return [(p, self.seed + j, *vae) for p in self.prompts for j in range(self.num_images)]


def vae_field(body: dict, vaes: list[str]) -> str | None:
    """The ``vae`` of a body: one of ``vaes`` (the variants the server draws with), or None."""
    vae = body.get("vae")
    if vae is not None and vae not in vaes:
        raise RequestError("vae", f"vae {shown(vae)}: this server draws with {' or '.join(vaes)} (serve --vae picks its default)")
    return vae


def int_field(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"{name} must be an integer, not {shown(value)}")
    if not low <= value <= high:
        raise RequestError(name, f"{name} must be in [{low}, {high}], not {value}")
    return value


def prompt_field(value, field: str) -> str:
    """A prompt of the body, under the rules infer applies (:func:`~tiue_export.prompts.prompt_problem`)."""
    if not isinstance(value, str):
        raise RequestError(field, f"{field} must be a string, not {shown(value)}")
    problem = prompt_problem(value)
    if problem is not None:
        raise RequestError(field, f"{field} {problem}")
    return value


def shown(value) -> str:
    """A body's value as JSON, cut short: a message quotes what was sent, not all of it."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_object(raw: bytes, holding: str) -> dict:
    """A request body that must be a JSON object (``holding``: what it must hold, for the message)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(None, f"the body is not JSON ({exc})") from exc
    except RecursionError as exc:
        raise RequestError(None, "the body is JSON nested too deeply") from exc
    if not isinstance(body, dict):
        raise RequestError(None, f"the body must be a JSON object with {holding}")
    return body


def parse_request(raw: bytes, max_images: int, vaes: list[str]) -> ImageRequest:
    """A ``POST /v1/images`` body as an :class:`ImageRequest`.

    Args:
        raw: the request body.
        max_images: the most images one request may ask for (prompts x num_images).
        vaes: the VAE decoder variants the server draws with.

    Raises:
        RequestError: naming the field at fault.
    """
    body = json_object(raw, "a prompt or prompts")
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise RequestError(unknown[0], f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
    if ("prompt" in body) == ("prompts" in body):
        raise RequestError("prompt", "give one of prompt (a string) or prompts (a list of strings)")
    if "prompt" in body:
        prompts = (prompt_field(body["prompt"], "prompt"),)
    else:
        value = body["prompts"]
        if not isinstance(value, list) or not value:
            raise RequestError("prompts", f"prompts must be a non-empty list of strings, not {shown(value)}")
        prompts = tuple(prompt_field(p, f"prompts[{i}]") for i, p in enumerate(value))
    num_images = int_field(body, "num_images", 1, 1, max_images)
    if len(prompts) * num_images > max_images:
        raise RequestError("num_images", f"{len(prompts)} prompts x {num_images} images is over this server's {max_images} images a request")
    seed = int_field(body, "seed", 0, 0, SEED_MAX - num_images + 1)
    one = len(prompts) * num_images == 1
    response = body.get("response", "png" if one else "json")
    if response not in RESPONSES:
        raise RequestError("response", f"response must be one of {', '.join(RESPONSES)}, not {shown(response)}")
    if response == "png" and not one:
        raise RequestError("response", f"response png holds one image, this request makes {len(prompts) * num_images}: ask for json")
    return ImageRequest(prompts, seed, num_images, response, vae_field(body, vaes))


def error_body(field: str | None, message: str) -> dict:
    return {"error": {"field": field, "message": message}}


def image_entry(png: bytes, metadata: dict, batch: dict) -> dict:
    """One image of a JSON response: the PNG (base64), its text metadata and the batch it was drawn in."""
    return {
        "prompt": metadata["prompt"],
        "seed": metadata["seed"],
        "png": base64.b64encode(png).decode("ascii"),
        "metadata": metadata,
        "batch": batch,
    }
