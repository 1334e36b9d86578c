"""Which way imports point, and that the fused forms are found through their map.

`archs/` holds the official networks only: the CPU inference engine (`slimsr.fused`) reads
them, never the other way round, so a network can be read, trained and exported without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import slimsr.archs
from slimsr.fused import FUSED_FORMS, fuse
from slimsr.fused.modules import FusedModule
from slimsr.registry import build_network, default_registry

ARCHS = Path(slimsr.archs.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` in the file names (relative ones resolved
    against `slimsr.archs`), wherever the statement sits (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ["slimsr", "archs"][: 2 - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _fused_imports(path: Path) -> set[str]:
    return {
        m for m in _imported_modules(path) if m == "slimsr.fused" or m.startswith("slimsr.fused.")
    }


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
        assert _fused_imports(probe), source
    clean = tmp_path / "clean.py"
    clean.write_text("from slimsr.archs.blocks import conv3x3\nimport slimsr.registry\n")
    assert not _fused_imports(clean)


def test_archs_import_nothing_from_the_fused_package() -> None:
    files = sorted(ARCHS.glob("*.py"))
    assert len(files) >= 8  # the package, its helpers and the six families
    for path in files:
        bad = _fused_imports(path)
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_every_fused_form_is_found_through_the_map() -> None:
    registry = default_registry()
    with torch.device("meta"):  # shapes only
        nets = {info.name: build_network(info.name) for info in registry}
    fused_families = {
        registry.get(name).family for name, net in nets.items() if type(net) in FUSED_FORMS
    }
    assert fused_families == {"bsrn", "fmen", "rfdn"}
    built = {type(net) for net in nets.values()}
    assert set(FUSED_FORMS) <= built  # no form registered for a class no variant builds
    for name in ("bsrn_s", "e_rfdn", "fmen_s"):
        assert isinstance(fuse(build_network(name, 2, **_small(name))), FusedModule), name
    assert fuse(build_network("abpn", 2)) is None
    assert fuse(build_network("fmen_s_train", 2)) is None  # re-parameterise first


def _small(name: str) -> dict[str, int]:
    """Narrow networks: the map, not the arithmetic, is under test here."""
    return {
        "e_rfdn": {"num_feat": 8, "num_block": 1},
        "bsrn_s": {"num_feat": 16, "num_block": 1},
    }.get(name, {})
