"""Imports point downwards (docs/architecture.md): the bottom layer pulls in nothing above it.

Read from the source with `ast` (nothing is imported), following `slimsr` imports from module
to module, function-level imports included: `data/` reaching `evaluate` through a helper is
as much a violation as importing it directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

BOTTOM = ("slimsr.data", "slimsr.imaging", "slimsr.metrics")
"""The modules checked, with everything they reach."""

ABOVE = (
    "slimsr.evaluate",
    "slimsr.inference_form",
    "slimsr.train",
    "slimsr.cli",
    "slimsr.compress",
    "slimsr.quant",
    "slimsr.export",
)
"""What the bottom layer must not reach."""


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def direct_imports(name: str) -> set[str]:
    """The `slimsr` modules `name` imports anywhere in its file (resolved to files)."""
    path = _module_file(name)
    assert path is not None, name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(name, path).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            if parts[0] != "slimsr":
                continue
            # the deepest existing module, and every package on the way (their __init__ runs)
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if _module_file(prefix) is not None:
                    found.add(prefix)
    found.discard(name)
    return found


def reachable(start: str) -> dict[str, str]:
    """Every module `start` reaches -> the module that imports it (for the failure message)."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in direct_imports(current):
            if nxt not in seen:
                seen[nxt] = current
                todo.append(nxt)
    return seen


def _bottom_modules() -> list[str]:
    names = []
    for root in BOTTOM:
        path = _module_file(root)
        assert path is not None, root
        if path.name == "__init__.py":
            names += [
                f"{root}.{p.stem}" if p.stem != "__init__" else root
                for p in sorted(path.parent.glob("*.py"))
            ]
        else:
            names.append(root)
    return names


def _forbidden(name: str) -> bool:
    return any(name == above or name.startswith(above + ".") for above in ABOVE)


def test_bottom_layer_imports_nothing_above_it() -> None:
    modules = _bottom_modules()
    assert "slimsr.data.folders" in modules and "slimsr.imaging.color" in modules
    problems = []
    for module in modules:
        chain = reachable(module)
        for bad in sorted(n for n in chain if _forbidden(n)):
            path, step = [bad], bad
            while chain[step]:
                step = chain[step]
                path.append(step)
            problems.append(" <- ".join(path))
    assert not problems, "\n".join(problems)


def test_the_scan_sees_imports() -> None:
    """The scanner itself: evaluate (above) does reach data and the inference fast path."""
    reached = reachable("slimsr.evaluate")
    assert "slimsr.data.folders" in reached and "slimsr.inference_form" in reached
    assert _forbidden("slimsr.export.onnx") and _forbidden("slimsr.quant.graph")
    assert not _forbidden("slimsr.imaging.io")
