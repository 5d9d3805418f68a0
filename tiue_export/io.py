"""Atomic file writes and PNG output with metadata."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it.

    Works for files and directories (a directory target is replaced whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / (path.name + suffix)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path``, or a one-line :class:`InputError` when it is missing or a directory."""
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise InputError(f"no such {what}: {path}")
    return path


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's contents; a one-line :class:`InputError` when it is missing, a
    directory, unreadable or not UTF-8."""
    from .errors import InputError

    path = require_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def png_bytes(image, metadata: dict[str, str] | None = None) -> bytes:
    """An HWC uint8 image as PNG bytes with text metadata (what :func:`write_png` writes)."""
    from io import BytesIO  # the standard library's, not this module

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, str(value))
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image, metadata: dict[str, str] | None = None) -> Path:
    """Write an HWC uint8 image as PNG with text metadata, atomically."""
    data = png_bytes(image, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
