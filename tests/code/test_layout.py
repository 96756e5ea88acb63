"""The test tree mirrors the package: tests/<layer>/test_<module>.py for radclip/<layer>/<module>.py.

tests/code holds the cross-cutting checks (architecture, network guard, config); tests/test_<module>.py
the top-level modules (radclip/serving.py). Test folders carry no ``__init__.py``: pytest's default
import mode imports each test file by its bare name, so names must be unique across folders, and
folders named like standard-library modules (tests/io, tests/code) must not become packages that
could shadow them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "radclip"
CROSS_CUTTING = {"code", "netguard"}  # not a layer: checks of the whole project, the network guard


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def test_test_file_names_are_unique_across_folders():
    counts = Counter(path.name for path in _test_files())
    assert not [name for name, count in counts.items() if count > 1]


def test_no_test_folder_is_a_package():
    assert not list(TESTS.rglob("__init__.py"))


def test_every_test_folder_is_a_layer_of_the_package():
    folders = {path.parent.relative_to(TESTS).as_posix() for path in _test_files()} - {"."}
    layers = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders - CROSS_CUTTING <= layers, f"test folders without a radclip layer: {sorted(folders - layers)}"


def test_top_level_test_files_are_named_after_top_level_modules():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    top = {path.stem.removeprefix("test_") for path in TESTS.glob("test_*.py")}
    assert top <= modules, f"tests/ holds tests of no top-level radclip module: {sorted(top - modules)}"
