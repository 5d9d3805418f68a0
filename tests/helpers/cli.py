"""Run the ``tiue-export`` CLI in-process, as a user would, and capture what it prints."""

from __future__ import annotations

import pytest


def exit_code(argv) -> int:
    """The exit code of ``tiue-export ARGV`` run in-process.

    Ctrl-C stops the test run here too: the CLI turns it into exit 130 ("interrupted"), which a test
    would record as one failure before the run went on with its native threads and worker
    processes half torn down by the signal.
    """
    from tiue_export.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    code = exc.value.code or 0
    if code == 130:
        raise KeyboardInterrupt
    return code


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``tiue-export ARGV`` (project errors are one line)."""
    code = exit_code(argv)
    out = capsys.readouterr()
    return code, out.out, out.err
