"""The CLI as a user runs it: real processes, exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import slimsr
from slimsr.weight_files import read_checkpoint
from tests.conftest import run_here


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


def all_commands() -> dict[str, object]:
    """Every command path ("upscale", "export onnx", ...) -> its click command."""
    import typer

    from slimsr.cli import app

    found: dict[str, object] = {}

    def walk(group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = cmd

    walk(typer.main.get_command(app), "")
    return found


def test_version_is_the_installed_distributions(capsys) -> None:
    from importlib.metadata import version

    code, out, _err = run_here(["--version"], capsys)
    assert code == 0 and out == f"slimsr {version('slimsr')}\n"


def test_command_summaries_are_whole_sentences(capsys) -> None:
    code, out, _err = run_here(["--help"], capsys)
    assert code == 0
    rows = out.split("Commands:")[1].strip().splitlines()
    names = {row.split()[0] for row in rows}
    assert names == {
        "compress",
        "eval",
        "export",
        "info",
        "models",
        "profile",
        "reparam",
        "train",
        "upscale",
    }
    for row in rows:
        summary = row.split(None, 1)[1]
        assert summary.endswith((".", ")")) and not summary.endswith("..."), row
        assert len(row) <= 80, row
    assert "Compress a model (Jiang et al.\n" not in out


def test_help_uses_plain_placeholders_and_says_what_o_is(capsys) -> None:
    commands = all_commands()
    for path in commands:
        code, out, _err = run_here([*path.split(), "--help"], capsys)
        assert code == 0, path
        for placeholder in ("{", "<list", "<path>", "<str>", "<int>", "<float>"):
            assert placeholder not in out, (path, out)
    outputs = {
        "upscale": "folder",
        "eval": "folder",
        "export onnx": "file",
        "export tflite": "file",
        "reparam": "file",
    }
    for path, kind in outputs.items():
        (option,) = [p for p in commands[path].params if "-o" in p.opts]
        assert kind in option.help.lower(), (path, option.help)
        assert option.metavar == ("DIR" if kind == "folder" else "FILE")


def test_device_defaults_agree_across_commands() -> None:
    commands = all_commands()
    defaults = {
        path: next(p.default for p in cmd.params if "--device" in p.opts)
        for path, cmd in commands.items()
        if any("--device" in p.opts for p in cmd.params)
    }
    assert {"upscale", "eval", "profile"} <= defaults.keys()
    assert set(defaults.values()) == {"auto"}, defaults


def test_info_reads_exported_onnx_and_tflite(tmp_path, capsys) -> None:
    from slimsr.export import export_onnx

    model = slimsr.create_model("abpn", 3, num_feat=8, num_mid=1)
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    code, out, err = run_here(["info", str(tmp_path / "m.onnx")], capsys)
    assert code == 0, err
    assert "ONNX, abpn x3, fp32" in out
    assert "[batch,3,height,width]" in out and "[batch,3,out_height,out_width]" in out
    pytest.importorskip("tensorflow", reason="needs the tflite-export extra (tensorflow-cpu)")
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")
    from slimsr.export.tflite import export_tflite

    export_tflite(model, tmp_path / "m.tflite", verify=False)
    code, out, err = run_here(["info", str(tmp_path / "m.tflite")], capsys)
    assert code == 0, err
    assert "TFLite, x3" in out and "fp32" in out and "float32 [1,?,?,3]" in out


def test_plain_pickles_and_random_bytes_are_told_apart(tmp_path) -> None:
    import pickle
    import warnings

    from slimsr.errors import CheckpointError

    (tmp_path / "rand.pth").write_bytes(bytes(range(256)) * 8)
    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump({"conv.weight": torch.zeros(2)}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's protocol-4 UserWarning must not escape
        with pytest.raises(CheckpointError, match=r"rand\.pth: not a readable checkpoint"):
            read_checkpoint(tmp_path / "rand.pth")
        with pytest.raises(CheckpointError, match=r"plain\.pth: a plain Python pickle"):
            read_checkpoint(tmp_path / "plain.pth")
