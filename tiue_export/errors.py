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


#: What to ``pip install`` for a missing module (by its top-level name): the extra of
#: pyproject.toml that brings it, so that its pinned range comes too (nncf 3.x with openvino ...);
#: the base install's own modules by their package. Every install hint reads this one table.
INSTALL = {
    "onnxruntime": "onnxruntime",
    "tokenizers": "tokenizers",
    **dict.fromkeys(("torch", "diffusers", "transformers", "safetensors", "onnx", "onnxslim", "scipy"), "'tiue-export[torch]'"),
    **dict.fromkeys(("accelerate", "peft"), "'tiue-export[train]'"),
    **dict.fromkeys(("matplotlib", "psutil"), "'tiue-export[bench]'"),
    **dict.fromkeys(("openvino", "nncf"), "'tiue-export[openvino]'"),
    **dict.fromkeys(("tensorrt", "cuda"), "'tiue-export[tensorrt]'"),
    "pyarrow": "'tiue-export[parquet]'",
    "tensorboard": "'tiue-export[tensorboard]'",
    "ray": "'tiue-export[serve]'",
}


def install_hint(module: str) -> str:
    """``pip install ...`` for ``module`` (a dotted name: its top-level package decides)."""
    top = module.split(".")[0]
    return f"pip install {INSTALL.get(top, top)}"


def require(module: str, why: str = ""):
    """Import ``module`` or raise :class:`MissingDependency` naming what to install (:data:`INSTALL`)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" ({why})" if why else ""
        raise MissingDependency(f"{module} is not installed{what}: {install_hint(module)}") from exc


def first_line(exc: BaseException) -> str:
    """A library exception as one line (its first), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
