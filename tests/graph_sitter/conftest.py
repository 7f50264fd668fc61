"""Fixtures for the graph-sitter tests (Python >= 3.12, the ``graph-sitter`` extra).

- ``gs_repo``: a small git repository in ``tmp_path``: two Python files with
  functions, classes and methods (``SOURCES``).
- ``codebase``: graph-sitter's ``Codebase`` of it.
- ``routed``: ``install``/``uninstall`` around a test (always uninstalled).

Nothing here imports graph-sitter at import time: on Python 3.11 the test modules
skip themselves with ``pytest.importorskip("graph_sitter")``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SOURCES = {
    "shop/pricing.py": '''\
"""Prices."""


def net_price(gross, rate):
    """Remove VAT."""
    return gross / (1 + rate)


def discount(price, percent):
    return price * (100 - percent) / 100


class Basket:
    def __init__(self):
        self.items = []

    def total(self):
        return sum(i.price for i in self.items)
''',
    "shop/names.py": """\
from shop.pricing import net_price


class Labeller:
    def label(self, item):
        return f"{item.name}: {net_price(item.price, 0.2):.2f}"


def slug(text):
    return text.lower().replace(" ", "-")
""",
}
# functions and methods, as `aiw analyze --filter functions` selects them
FUNCTIONS = {"net_price", "discount", "Basket.__init__", "Basket.total", "Labeller.label", "slug"}
CLASSES = {"Basket", "Labeller"}


def git(path: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(path), *args],
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "HOME": str(path),
            "PATH": "/usr/bin:/bin:/usr/local/bin",
        },
    )


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "init")
    return path


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "shop-repo", files: dict[str, str] | None = None) -> Path:
        return make_repo(tmp_path / name, SOURCES if files is None else files)

    return make


@pytest.fixture
def gs_repo(repo_factory: Callable[..., Path]) -> Path:
    return repo_factory()


@pytest.fixture
def codebase(gs_repo: Path) -> Any:
    from graph_sitter import Codebase

    return Codebase(str(gs_repo))


@pytest.fixture
def routed() -> Iterator[Any]:
    from app.integrations import graph_sitter as integration

    yield integration
    integration.uninstall()
