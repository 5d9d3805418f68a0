"""OpenAI's images API on ``tiue-export serve``: ``POST /v1/images/generations``, without Ray.

The body OpenAI documents: ``prompt``, ``n``, ``size`` (the bundle's own, ``WxH``, or ``auto``),
``response_format`` (``b64_json``; ``url`` is not offered: nothing is stored to link to),
``model`` (the bundle's name), ``output_format`` (``png``), plus two extension fields: ``seed``
(image j uses ``seed + j``, as ``POST /v1/images`` and ``tiue-export infer``; default 0) and
``vae`` (the VAE decoder variant, among those the server draws with). Other fields
(``quality``, ``style``, ``user`` ...) are ignored, as OpenAI ignores what a model does not use.
The answer is ``{"created", "data": [{"b64_json"}]}``; errors use OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``, so its clients raise their usual exceptions.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import PurePath

from .api import SEED_MAX, ImageRequest, RequestError, int_field, json_object, prompt_field, shown, vae_field

#: ``type`` of OpenAI's error envelope by HTTP status
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error", 503: "server_error", 500: "server_error"}


class OpenAIError(RequestError):
    """A request OpenAI's API would refuse: its status, ``param`` and ``code``."""

    def __init__(self, param: str | None, message: str, status: int = 400, code: str | None = None):
        super().__init__(param, message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Served:
    """What the server draws, as the OpenAI fields name it."""

    model: str  # the bundle as the server was given it (the PNGs' ``model`` text)
    height: int
    width: int
    vaes: tuple[str, ...] = ("full",)  # the VAE decoder variants it draws with, its default first

    @property
    def name(self) -> str:
        """The bundle's name: its directory's."""
        return PurePath(self.model.rstrip("/\\")).name or self.model

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def parse_generation(raw: bytes, served: Served, max_images: int) -> ImageRequest:
    """A ``POST /v1/images/generations`` body as the :class:`~tiue_export.serve.api.ImageRequest`
    ``POST /v1/images`` would make of the same prompt, seed and count.

    Raises:
        OpenAIError: naming the field at fault (``param``).
    """
    try:
        body = json_object(raw, "a prompt")
        if "prompt" not in body:
            raise OpenAIError("prompt", "prompt is required")
        prompt = prompt_field(body["prompt"], "prompt")
        n = int_field(body, "n", 1, 1, max_images) if body.get("n") is not None else 1
        seed = int_field(body, "seed", 0, 0, SEED_MAX - n + 1) if body.get("seed") is not None else 0
        vae = vae_field(body, served.vaes)
    except OpenAIError:
        raise
    except RequestError as exc:  # the checks POST /v1/images makes, in OpenAI's terms
        raise OpenAIError(exc.field, exc.message) from exc
    for name in ("model", "size", "response_format", "output_format", "quality", "style", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise OpenAIError(name, f"{name} must be a string, not {shown(body[name])}")
    if not isinstance(body.get("stream", False), (bool, type(None))):
        raise OpenAIError("stream", f"stream must be a boolean, not {shown(body['stream'])}")
    model = body.get("model")
    if model is not None and model not in (served.name, served.model):
        raise OpenAIError("model", f"the model {shown(model)} is not served here: this server draws with {served.name!r}", 404, "model_not_found")
    size = body.get("size")
    if size is not None and size not in ("auto", served.size):
        raise OpenAIError("size", f"size {shown(size)} is not served: this model draws {served.size} only", code="invalid_size")
    response_format = body.get("response_format")
    if response_format not in (None, "b64_json"):
        hint = "url is not offered (nothing is stored to link to)" if response_format == "url" else f"{shown(response_format)} is unknown"
        raise OpenAIError("response_format", f"response_format {hint}: ask for b64_json")
    output_format = body.get("output_format")
    if output_format not in (None, "png"):
        raise OpenAIError("output_format", f"output_format {shown(output_format)} is not offered: the images are PNGs")
    if body.get("stream"):
        raise OpenAIError("stream", "stream is not offered: the images come in one answer")
    return ImageRequest((prompt,), seed, n, "json", vae)


def generation_body(pngs: list[bytes], created: int | None = None) -> dict:
    """OpenAI's ``ImagesResponse``: ``created`` (Unix seconds) and one ``b64_json`` per image."""
    return {"created": int(time.time()) if created is None else created, "data": [{"b64_json": base64.b64encode(p).decode("ascii")} for p in pngs]}


def error_envelope(status: int, param: str | None, message: str, code: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}}
