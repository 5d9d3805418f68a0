"""Shared fixtures: tiny random diffusers pipelines built in code, once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_report_header(config):
    """The CPU's int8 / bf16 features first: int8 results differ by ISA (docs/engines.md), so a
    failure report says which kind of CPU it came from."""
    from tiue_export.cpu import cpu_features

    return f"cpu: {cpu_features().line()}"


def pytest_sessionstart(session):
    """``-q`` hides the report header: the CPU line is printed anyway."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(pytest_report_header(session.config))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A factory ``tiny_models(variant) -> Path`` of cached tiny student directories."""
    from tiue_export.reference.random_models import build_tiny_pipeline

    cache = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def get(variant: str = "sd21"):
        if variant not in cache:
            cache[variant] = build_tiny_pipeline(root / variant, variant)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def tiny_sd21(tiny_models):
    return tiny_models("sd21")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the model and bundle cache (bench's random-weight models and exports) out of the user's home."""
    monkeypatch.setenv("TIUE_EXPORT_CACHE", str(tmp_path / "cache"))


#: Prompts of the tiny distillation teacher's tests.
DISTILL_PROMPTS = ["a photo of a cat", "a red cube on a blue table", "a large yellow circle", "two dogs playing in the snow"]


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny SD 2.1-shaped teacher pipeline to distil from."""
    from tiue_export.reference.random_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("teacher") / "teacher", "sd21", student=False)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(DISTILL_PROMPTS) + "\n")
    return p
