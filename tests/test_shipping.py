"""scripts/shipping.py: shipped provenance made portable without touching a single weight."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import slimsr

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_shipping():
    spec = importlib.util.spec_from_file_location("shipping", REPO_ROOT / "scripts" / "shipping.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_portable_rewrites_whole_path_components_only(tmp_path: Path) -> None:
    shipping = load_shipping()
    shared, repo = tmp_path / "shared", tmp_path / "main"
    shared.mkdir()
    (tmp_path / "link").symlink_to(shared)
    text = json.dumps(
        {
            "teacher": f"{shared}/weights/official/bsrn_x2.pth",
            "via_link": f"{tmp_path}/link/datasets/T91/HR",
            "set": f"Set5 (LR {shared}/datasets/Set5)",
            "run": f"{repo}/runs/a/student.safetensors",
            "other": f"{shared}2/x.png",
            "scratch": "/elsewhere/runs/b",
        }
    )
    got = json.loads(shipping.portable(text, tmp_path / "link", repo_root=repo))
    assert got == {
        "teacher": "../shared/weights/official/bsrn_x2.pth",
        "via_link": "../shared/datasets/T91/HR",
        "set": "Set5 (LR ../shared/datasets/Set5)",
        "run": "runs/a/student.safetensors",
        "other": f"{shared}2/x.png",  # another folder that merely starts alike
        "scratch": "/elsewhere/runs/b",  # outside both: the truth, kept
    }


def test_copy_portable_weights_keeps_tensors_and_rewrites_metadata(tmp_path: Path) -> None:
    shipping = load_shipping()
    shared = tmp_path / "shared"
    shared.mkdir()
    src, dst = tmp_path / "a.safetensors", tmp_path / "out" / "b.safetensors"
    model = slimsr.create_model("edsrmini", 2, num_feat=6, num_block=1)
    slimsr.save(model, src, extra={"teacher": str(shared / "t.pth")})
    shipping.copy_portable_weights(src, dst, shared)
    before, after = load_file(src), load_file(dst)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with safe_open(str(dst), framework="pt") as f:
        metadata = "".join((f.metadata() or {}).values())
    assert "../shared/t.pth" in metadata and str(shared) not in metadata
    assert slimsr.load(dst).num_parameters() == model.num_parameters()
    assert not list(dst.parent.glob("*.part"))  # written through a temporary file
