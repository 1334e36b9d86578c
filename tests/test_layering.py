"""Which way imports point (docs/architecture.md), and that the fused forms are found through
their map.

One scanner reads the source with `ast` (nothing is imported) and follows `slimsr` imports
from module to module, function-level imports included, so reaching a forbidden module through
a helper is as much a violation as importing it directly. Two rules use it:

- the bottom layer (`data/`, `imaging/`, `metrics.py`) reaches nothing above it;
- `archs/` holds the official networks only: the CPU inference engine (`slimsr.fused`) reads
  them, never the other way round, so a network can be read, trained and exported without it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import torch

from slimsr.fused import FUSED_FORMS, fuse
from slimsr.fused.modules import FusedModule
from slimsr.registry import build_network, default_registry

SRC = Path(__file__).resolve().parents[1] / "src"

BOTTOM = ("slimsr.data", "slimsr.imaging", "slimsr.metrics")
"""The bottom layer's modules, checked with everything they reach."""

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


# -- the scanner ----------------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_in(path: Path, package: str) -> set[str]:
    """The `slimsr` modules the file imports anywhere (relative imports resolved against
    `package`), each resolved to the deepest existing module plus every package on the way
    (their `__init__` runs); the top-level `slimsr` package itself is not counted."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            if parts[0] != "slimsr":
                continue
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if _module_file(prefix) is not None:
                    found.add(prefix)
    return found


def direct_imports(name: str) -> set[str]:
    """The `slimsr` modules module `name` imports anywhere in its file."""
    path = _module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path, package) - {name}


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


def modules_of(*roots: str) -> list[str]:
    """The roots and, for packages, every module file directly inside them."""
    names = []
    for root in roots:
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


def violations(modules: list[str], forbidden: Callable[[str], bool]) -> list[str]:
    """Each forbidden module reached, with the import chain that reaches it."""
    problems = []
    for module in modules:
        chain = reachable(module)
        for bad in sorted(n for n in chain if forbidden(n)):
            path, step = [bad], bad
            while chain[step]:
                step = chain[step]
                path.append(step)
            problems.append(" <- ".join(path))
    return problems


def _above_bottom(name: str) -> bool:
    return any(name == above or name.startswith(above + ".") for above in ABOVE)


def _fused(name: str) -> bool:
    return name == "slimsr.fused" or name.startswith("slimsr.fused.")


# -- the scanner itself ---------------------------------------------------------------------
def test_the_scan_sees_imports_of_every_form(tmp_path: Path) -> None:
    forms = (
        "import slimsr.fused.kernels\n",
        "def f():\n    from slimsr import fused\n",
        "from ..fused.modules import FusedConv\n",
        "from .. import fused\n",
    )
    for i, source in enumerate(forms):
        probe = tmp_path / f"probe{i}.py"
        probe.write_text(source)
        assert any(map(_fused, imports_in(probe, "slimsr.archs"))), source
    clean = tmp_path / "clean.py"
    clean.write_text("from slimsr.archs.blocks import conv3x3\nimport slimsr.registry\n")
    assert not any(map(_fused, imports_in(clean, "slimsr.archs")))


def test_the_scan_follows_imports() -> None:
    """evaluate (above) does reach data and the inference fast path."""
    reached = reachable("slimsr.evaluate")
    assert "slimsr.data.folders" in reached and "slimsr.inference_form" in reached
    assert _above_bottom("slimsr.export.onnx") and _above_bottom("slimsr.quant.graph")
    assert not _above_bottom("slimsr.imaging.io")


# -- the rules ------------------------------------------------------------------------------
def test_bottom_layer_imports_nothing_above_it() -> None:
    modules = modules_of(*BOTTOM)
    assert "slimsr.data.folders" in modules and "slimsr.imaging.color" in modules
    problems = violations(modules, _above_bottom)
    assert not problems, "\n".join(problems)


def test_archs_import_nothing_from_the_fused_package() -> None:
    modules = modules_of("slimsr.archs")
    assert len(modules) >= 8  # the package, its helpers and the six families
    problems = violations(modules, _fused)
    assert not problems, "\n".join(problems)


# -- the fused forms' map -------------------------------------------------------------------
def test_every_fused_form_is_found_through_the_map() -> None:
    registry = default_registry()
    with torch.device("meta"):  # shapes only
        nets = {info.name: build_network(info.name) for info in registry}
    fused_families = {
        registry.get(name).family for name, net in nets.items() if type(net) in FUSED_FORMS
    }
    assert fused_families == {
        "abpn",
        "bsrn",
        "edsr",
        "fmen",
        "rfdn",
        "rlfn",
        "safmn",
        "smfanet",
        "span",
        "swinir",
    }
    built = {type(net) for net in nets.values()}
    assert set(FUSED_FORMS) <= built  # no form registered for a class no variant builds
    for name in ("abpn", "bsrn_s", "e_rfdn", "edsrmini", "fmen_s", "rlfn_ntire", "span_ntire"):
        assert isinstance(fuse(build_network(name, 2, **_small(name))), FusedModule), name
    assert fuse(build_network("fmen_s_train", 2)) is None  # re-parameterise first
    assert fuse(build_network("span_ntire_train", 2)) is None  # the same


def _small(name: str) -> dict[str, int]:
    """Narrow networks: the map, not the arithmetic, is under test here."""
    return {
        "e_rfdn": {"num_feat": 8, "num_block": 1},
        "bsrn_s": {"num_feat": 16, "num_block": 1},
        "rlfn_ntire": {"num_feat": 8, "num_block": 1, "mid_feat": 8},
    }.get(name, {})
