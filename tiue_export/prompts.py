"""Prompt files: .txt, .jsonl, .csv or .parquet, read into unique prompts in first-seen order
(distill's training prompts, generate's jobs)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .errors import InputError, require
from .files import read_text, require_file

#: Keys (JSONL) or columns (CSV, Parquet) that hold the prompt, in order of preference.
CAPTION_KEYS = ("caption", "prompt", "text")
FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


def dedupe(prompts) -> list[str]:
    """Strip whitespace, drop empty entries and repeats, keep first-seen order."""
    return list(dict.fromkeys(p.strip() for p in prompts if isinstance(p, str) and p.strip()))


def _pick_key(keys, path: Path) -> str:
    for key in CAPTION_KEYS:
        if key in keys:
            return key
    raise InputError(f"{path}: no caption column: expected one of {', '.join(CAPTION_KEYS)}, found {', '.join(map(str, keys)) or 'none'}")


def _read_jsonl(path: Path, text: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object with a {'/'.join(CAPTION_KEYS)} key")
        out.append(obj[_pick_key(list(obj), Path(f"{path}:{n}"))])
    return out


def _read_csv(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    key = _pick_key(reader.fieldnames or [], path)
    return [row[key] for row in reader]


def _read_parquet(path: Path) -> list[str]:
    pq = require("pyarrow.parquet", "pyarrow", "to read .parquet prompt files")
    schema = pq.read_schema(path)
    key = _pick_key(schema.names, path)
    return pq.read_table(path, columns=[key]).column(key).to_pylist()


def load_prompts(path) -> list[str]:
    """Unique prompts of a file, in first-seen order.

    Args:
        path: ``.txt`` (one prompt a line), ``.jsonl`` (objects with a ``caption``, ``prompt`` or
            ``text`` key), ``.csv`` or ``.parquet`` (a column of that name).

    Raises:
        InputError: missing file, unknown format, no caption column, or no prompt at all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        require_file(path, "prompts file")
        raw = _read_parquet(path)
    elif suffix in (".txt", ".jsonl", ".csv"):
        text = read_text(path, "prompts file")  # missing, a directory or not UTF-8: one line
        raw = {".txt": lambda p, t: t.splitlines(), ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix](path, text)
    else:
        raise InputError(f"{path}: unknown prompts format {suffix or '(none)'}: use one of {', '.join(FORMATS)}")
    prompts = dedupe(raw)
    if not prompts:
        raise InputError(f"{path}: no prompts found")
    return prompts
