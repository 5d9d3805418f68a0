"""Run the ``tiue-export`` CLI in-process, as a user would, and capture what it prints."""

from __future__ import annotations

import pytest


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``tiue-export ARGV`` (project errors are one line)."""
    from tiue_export.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err
