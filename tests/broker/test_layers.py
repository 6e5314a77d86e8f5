"""The broker's module structure: no import cycles, and the import-linter contracts hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_no_import_cycle_among_broker_modules() -> None:
    # Imports inside functions and under TYPE_CHECKING count: a cycle held up
    # only by a deferred import is still a cycle.
    graph = grimp.build_graph("kops", cache_dir=None)
    cycles = []
    for module in sorted(m for m in graph.modules if m.startswith("kops.broker")):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("kops.") and graph.chain_exists(
                importer=imported, imported=module
            ):
                back = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(f"{module} -> {' -> '.join(back or ())}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_import_linter_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
