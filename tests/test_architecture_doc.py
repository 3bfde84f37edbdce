"""docs/architecture.md's package table against the tree: every package it names exists and
every package and module of the tree is in it, so the doc cannot fall behind the code unseen."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def table_rows() -> dict[str, str]:
    """First cell (the package or files) -> second cell, for the table under "Packages"."""
    section = DOC.split("## Packages and what each owns", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            rows[cells[0]] = "|".join(cells[1:])
    return rows


def packages_in_tree() -> set[str]:
    found = {"engines/", "plots/"}
    found |= {f"orchestrator/{p.name}/" for p in (ROOT / "orchestrator").iterdir()
              if p.is_dir() and (p / "__init__.py").is_file()}
    return found


def test_every_package_of_the_tree_has_a_row_and_every_row_a_package():
    named = {m for first in table_rows() for m in re.findall(r"`([^`]+/)`", first)}
    assert named == packages_in_tree()


def test_every_module_of_a_package_is_named_in_its_row():
    rows = {pkg: text for first, text in table_rows().items() for pkg in re.findall(r"`([^`]+/)`", first)}
    missing = []
    for pkg, text in rows.items():
        for path in sorted((ROOT / pkg).glob("*.py")):
            if path.name != "__init__.py" and f"`{path.name}`" not in text:
                missing.append(f"{pkg}{path.name}")
    assert missing == []


def test_every_module_a_row_names_exists_in_that_package():
    stale = []
    for first, text in table_rows().items():
        for pkg in re.findall(r"`([^`]+/)`", first):
            for name in re.findall(r"`([a-z_]+\.py)`", text):
                if not (ROOT / pkg / name).is_file() and not list((ROOT / pkg).rglob(name)):
                    stale.append(f"{pkg}{name}")
    assert stale == []


def test_the_top_level_files_row_names_files_that_exist():
    for first in table_rows():
        for name in re.findall(r"`(orchestrator/[a-z_]+\.py)`", first):
            assert (ROOT / name).is_file(), name
