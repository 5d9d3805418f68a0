"""Prompts: the rules one prompt must meet (the same for infer, generate, serve and the C++
runtime), and prompt files (.txt, .jsonl, .csv or .parquet) read into unique prompts in first-seen
order (distill's training prompts, generate's jobs)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .errors import InputError, first_line, require
from .files import read_text, require_file

#: Keys (JSONL) or columns (CSV, Parquet) that hold the prompt, in order of preference.
CAPTION_KEYS = ("caption", "prompt", "text")
FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
#: The longest prompt taken: CLIP's text encoder reads 77 tokens (a few hundred characters), so a
#: longer text changes nothing in the image and would only be copied whole into every PNG's text.
MAX_PROMPT_CHARS = 10_000
#: CLIP's context: the tokens of a prompt the text encoder reads.
TEXT_TOKENS = 77


def prompt_problem(text: str) -> str | None:
    """What makes ``text`` no prompt (a phrase to follow its name: "is empty"), or None.

    Refused: whitespace only; text that is not Unicode (a byte that was not UTF-8 on the command
    line, a lone surrogate in JSON); more than :data:`MAX_PROMPT_CHARS` characters.
    """
    if not text.strip():
        return "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = f"byte {ord(bad) - 0xDC00:#04x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"code point U+{ord(bad):04X}"
        return f"holds a {byte} at character {exc.start} that is not UTF-8 text: give the prompt in UTF-8"
    if len(text) > MAX_PROMPT_CHARS:
        return (
            f"is {len(text)} characters long, over {MAX_PROMPT_CHARS}: the text encoder reads only the first "
            f"{TEXT_TOKENS} tokens (a few hundred characters)"
        )
    return None


def check_prompt(text: str, what: str = "prompt") -> str:
    """``text``, or a one-line :class:`InputError` naming ``what`` (``--prompt``, ``FILE:LINE``)."""
    problem = prompt_problem(text)
    if problem is not None:
        raise InputError(f"{what} {problem}")
    return text


def dedupe(prompts) -> list[str]:
    """Strip whitespace, drop empty entries and repeats, keep first-seen order."""
    return list(dict.fromkeys(p.strip() for p in prompts if isinstance(p, str) and p.strip()))


def _checked(entries) -> list[str]:
    """The texts of (where, text) entries, each one a prompt or empty (dropped later); a text that
    is no prompt (:func:`prompt_problem`) is refused naming where it is."""
    out = []
    for where, text in entries:
        if text is None or (isinstance(text, str) and not text.strip()):
            continue
        if not isinstance(text, str):
            raise InputError(f"{where}: the prompt must be text, not {json.dumps(text, default=str)[:60]}")
        out.append(check_prompt(text.strip(), f"{where}: the prompt"))
    return out


def _pick_key(keys, path: Path) -> str:
    for key in CAPTION_KEYS:
        if key in keys:
            return key
    raise InputError(f"{path}: no caption column: expected one of {', '.join(CAPTION_KEYS)}, found {', '.join(map(str, keys)) or 'none'}")


def _read_txt(path: Path, text: str) -> list[tuple[str, str]]:
    return [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1)]


def _read_jsonl(path: Path, text: str) -> list[tuple[str, object]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object with a {'/'.join(CAPTION_KEYS)} key")
        out.append((f"{path}:{n}", obj[_pick_key(list(obj), Path(f"{path}:{n}"))]))
    return out


def _read_csv(path: Path, text: str) -> list[tuple[str, object]]:
    # strict: a quote left open is an error, not the rest of the file read as one prompt
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        key = _pick_key(reader.fieldnames or [], path)
        return [(f"{path}:{reader.line_num}", row[key]) for row in reader]
    except csv.Error as exc:  # line_num counts the lines read before the one at fault
        raise InputError(f"{path}:{reader.line_num + 1}: not valid CSV ({exc})") from exc


def _read_parquet(path: Path) -> list[tuple[str, object]]:
    pq = require("pyarrow.parquet", "to read .parquet prompt files")
    import pyarrow as pa

    try:
        schema = pq.read_schema(path)
        key = _pick_key(schema.names, path)
        rows = pq.read_table(path, columns=[key]).column(key).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)})") from exc
    return [(f"{path}: row {n}", v) for n, v in enumerate(rows, 1)]


def load_prompts(path) -> list[str]:
    """Unique prompts of a file, in first-seen order.

    Args:
        path: ``.txt`` (one prompt a line), ``.jsonl`` (objects with a ``caption``, ``prompt`` or
            ``text`` key), ``.csv`` or ``.parquet`` (a column of that name).

    Raises:
        InputError: missing or unreadable file, unknown format, malformed content (naming the
            file and line), no caption column, a prompt :func:`check_prompt` refuses, or no prompt at all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        require_file(path, "prompts file")
        raw = _read_parquet(path)
    elif suffix in (".txt", ".jsonl", ".csv"):
        text = read_text(path, "prompts file").removeprefix("\ufeff")  # a spreadsheet's byte-order mark is no text
        raw = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix](path, text)
    else:
        raise InputError(f"{path}: unknown prompts format {suffix or '(none)'}: use one of {', '.join(FORMATS)}")
    prompts = dedupe(_checked(raw))
    if not prompts:
        raise InputError(f"{path}: no prompts found")
    return prompts
