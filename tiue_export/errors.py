"""The project's error types: the CLI prints their message on one line and exits with their code."""


class TiueError(Exception):
    """A failure the user can act on; ``exit_code`` 1 means the job failed."""

    exit_code = 1


class InputError(TiueError):
    """Bad input: a path, a model directory, an option value. Exit code 2."""

    exit_code = 2


class ModelError(InputError):
    """A model directory or bundle that is missing, incomplete, corrupt or contradictory."""


class NonFiniteError(TiueError):
    """A stage produced NaN or infinite values (broken weights or inputs): nothing is written."""


class MissingDependency(TiueError):
    """An optional package is not installed; the message names the ``pip install`` to run."""


def require(module: str, pip_name: str | None = None, why: str = ""):
    """Import ``module`` or raise :class:`MissingDependency` naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" ({why})" if why else ""
        raise MissingDependency(
            f"{module} is not installed{what}: pip install {pip_name or module}"
        ) from exc


def first_line(exc: BaseException) -> str:
    """A library exception as one line (its first), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
