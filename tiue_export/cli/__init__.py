"""The ``tiue-export`` command line: a thin Click layer; each command lives in its own module.

Subcommands are imported only when run, so ``tiue-export --help`` needs neither torch nor a GPU.
Project errors (:class:`tiue_export.errors.TiueError`) print one line and exit with their code
(2 for bad input, 1 for a failed job), and so do the environment's (a read-only or full disk, a
file that vanished: ``OSError``; memory); ``-v`` prints the traceback and its cause before that
line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from ..errors import TiueError, first_line

# name -> (module, attribute, one-line help): the help line is here so --help imports nothing.
COMMANDS = {
    "infer": ("tiue_export.cli.infer", "infer", "Generate images from prompts with the one-pass sampler."),
    "export": ("tiue_export.cli.export", "export", "Export a student to a validated ONNX bundle."),
    "distill": ("tiue_export.cli.distill", "distill", "Distil a teacher into a one-pass TiUE student (VSD + KL)."),
    "distill-pairs": ("tiue_export.cli.distill", "distill_pairs", "Draw teacher (noise, latent) pairs into a store that distill runs share."),
    "distill-export": ("tiue_export.cli.distill", "distill_export", "Write the student of a distill checkpoint (to sample or export it)."),
    "distill-vae": ("tiue_export.cli.distill_vae", "distill_vae", "Distil the model's VAE decoder into a tiny AutoencoderTiny decoder."),
    "check": ("tiue_export.cli.check", "check", "Compare every backend with the PyTorch reference, per graph and end to end."),
    "bench": ("tiue_export.cli.bench", "bench", "Time every backend per stage against the PyTorch references."),
    "calibrate": ("tiue_export.cli.calibrate", "calibrate", "Calibrate int8 Q/DQ UNet graphs into a bundle."),
    "cache": ("tiue_export.cli.cache", "cache", "Show or clear the OpenVINO graph cache (converted and compiled graphs)."),
    "build-trt": ("tiue_export.cli.build_trt", "build_trt", "Build TensorRT engines for this GPU into a bundle."),
    "toy": ("tiue_export.cli.toy", "toy", "The built-in toy domain: train its teacher, evaluate models on it."),
    "serve": ("tiue_export.cli.serve", "serve", "Serve a bundle over HTTP on Ray Serve, with dynamic batching."),
    "generate": ("tiue_export.cli.generate", "generate", "Generate images for a prompt file on Ray Data over an actor pool, resumable."),
}


class LazyGroup(click.Group):
    """A Click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log = logging.getLogger("tiue_export")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tiue-export")
@click.option("-v", "--verbose", is_flag=True, help="Show debug messages.")
def cli(verbose: bool):
    """tiue-export: export and edge inference for one-pass TiUE text-to-image students."""
    setup_logging(verbose)
    _STATE["verbose"] = verbose


_STATE = {"verbose": False}


def _fail(message: str, code: int) -> None:
    """Print the error (after its traceback with ``-v``) and exit with ``code``."""
    if _STATE["verbose"]:
        import traceback

        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def os_error_line(exc: OSError) -> str:
    """An OSError as the user's one line: what failed, on which path."""
    what = exc.strerror or first_line(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{what}: {' -> '.join(paths)}" if paths else what


def quiet_libraries() -> None:
    """Silence the progress bars and advisories diffusers/transformers print while loading."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:
        pass


def main(argv=None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tiue-export", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except TiueError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # the environment: permissions, a full disk, a path that vanished
        _fail(os_error_line(exc), 1)
    except MemoryError:
        _fail("out of memory: try a smaller --batch-size (or --low-memory with a bundle)", 1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, as the project's own errors, with where to look
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
