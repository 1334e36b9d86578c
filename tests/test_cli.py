"""The CLI as a user runs it: real processes, exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import slimsr
from slimsr.checkpoints import read_checkpoint


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimsr", *args], capture_output=True, text=True, timeout=300
    )


def test_models_table_and_json() -> None:
    out = run("models")
    assert out.returncode == 0, out.stderr
    for text in ("bsrn_s", "fmen_s_train", "swinirmini", "49,603", "1,369,883", "[0,255]"):
        assert text in out.stdout
    rows = json.loads(run("models", "fmen*", "--json").stdout)
    assert [r["name"] for r in rows] == ["fmen", "fmen_s", "fmen_s_train", "fmen_train"]
    fmen_s = next(r for r in rows if r["name"] == "fmen_s")
    assert fmen_s["params"] == {"2": 324_830, "3": 331_595, "4": 341_066}
    assert fmen_s["input_range"] == 255.0


def test_user_errors_are_one_line_exit_2(tmp_path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x80\x02garbage")
    for args in (("info", str(tmp_path / "missing.pth")), ("info", str(bad))):
        out = run(*args)
        assert out.returncode == 2
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr
    out = run("no-such-command")
    assert out.returncode == 2


def test_info_names_the_detected_architecture(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"params": slimsr.build_network("bsrn_s", 3).state_dict()}, path)
    out = run("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "bsrn_s x3" in out.stdout and "147,195 parameters" in out.stdout


def test_reparam_end_to_end_and_refuses_to_clobber(tmp_path) -> None:
    train = slimsr.create_model("fmen_s_train", 2)
    for m in train.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    src = tmp_path / "train.pth"
    torch.save({"params_ema": train.net.state_dict()}, src)
    dst = tmp_path / "deploy.safetensors"
    out = run("reparam", str(src), "-o", str(dst))
    assert out.returncode == 0, out.stderr
    ckpt = read_checkpoint(dst)
    assert ckpt.meta["arch"] == "fmen_s" and ckpt.meta["params"] == 324_830
    deploy = slimsr.load(dst)
    x = torch.rand(1, 3, 10, 12)
    with torch.inference_mode():
        a, b = train.eval()(x), deploy(x)
    assert (a - b).abs().max() <= 1e-4 * (a.max() - a.min())
    before = dst.read_bytes()
    out = run("reparam", str(src), "-o", str(dst))
    assert out.returncode == 2 and "exists" in out.stderr
    assert dst.read_bytes() == before
    out = run("reparam", str(dst), "-o", str(tmp_path / "again.safetensors"))
    assert out.returncode == 2 and "error:" in out.stderr
    assert not (tmp_path / "again.safetensors").exists()
