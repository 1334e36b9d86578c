"""Reading, canonicalising, detecting and writing weights; errors a user can cause."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import pytest
import torch

import slimsr
from slimsr.errors import CheckpointError
from slimsr.weight_files import canonicalize, read_checkpoint, sidecar_path


def small_edsrmini() -> slimsr.SRModel:
    return slimsr.create_model("edsrmini", 2, num_feat=8, num_block=2)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"params": sd},
        lambda sd: {"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "iter": 5},
    ],
)
def test_canonicalize_unwraps_trainer_containers(wrap) -> None:
    sd = OrderedDict(small_edsrmini().net.state_dict())
    got = canonicalize(wrap(sd))
    assert list(got) == list(sd)
    for k in sd:  # params_ema is preferred over params
        assert torch.equal(got[k], sd[k])


def test_param_key_selects_explicitly_and_missing_key_is_an_error() -> None:
    sd = small_edsrmini().net.state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    got = canonicalize({"params_ema": sd, "params": zeros}, param_key="params")
    assert all(not v.any() for v in got.values())
    with pytest.raises(CheckpointError, match="no 'params_ema' entry"):
        canonicalize({"params": sd}, param_key="params_ema")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_then_load_round_trip_keeps_architecture_and_outputs(tmp_path, suffix) -> None:
    model = small_edsrmini()
    path = tmp_path / f"m{suffix}"
    if suffix == ".safetensors":
        side = slimsr.save(model, path)
        meta = json.loads(side.read_text())
        assert meta["arch"] == "edsrmini" and meta["scale"] == 2
        assert meta["kwargs"] == {"num_feat": 8, "num_block": 2}
        assert meta["params"] == model.num_parameters()
    else:
        torch.save({"params": model.net.state_dict()}, path)
    loaded = slimsr.load(path)
    assert (loaded.name, loaded.scale, loaded.kwargs) == (
        "edsrmini",
        2,
        {"num_feat": 8, "num_block": 2},
    )
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_sidecar_keeps_hyper_parameters_the_keys_cannot_reveal(tmp_path) -> None:
    model = slimsr.create_model("edsrmini", 2, res_scale=2.0)
    path = tmp_path / "mini.safetensors"
    slimsr.save(model, path)
    assert slimsr.load(path).kwargs == {"res_scale": 2.0}
    sidecar_path(path).unlink()  # the safetensors header carries the same description
    assert slimsr.load(path).kwargs == {"res_scale": 2.0}
    assert not list(tmp_path.glob("*.part"))


def test_missing_folder_unsupported_and_corrupt_files_raise_clear_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported weights format"):
        read_checkpoint(tmp_path / "w.onnx")
    good = tmp_path / "good.pth"
    torch.save(small_edsrmini().net.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.pth"):
        read_checkpoint(truncated)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.npz"):
        read_checkpoint(tmp_path / "junk.npz")


class Payload:  # an arbitrary Python object must never be unpickled
    def __reduce__(self):
        return (print, ("executed!",))


def test_pickles_with_python_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle|not a readable"):
        read_checkpoint(path)


def test_state_dict_that_fits_nothing_names_the_closest_architecture(tmp_path) -> None:
    sd = slimsr.build_network("edsr_baseline", 2).state_dict()
    sd.pop("tail.1.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        slimsr.load(path)
    msg = str(err.value)
    assert "closest is edsr_baseline x2" in msg
    assert "1 missing, 1 unexpected, 0 mis-shaped" in msg
    assert "\n" not in msg


def test_weights_for_another_scale_are_refused_with_what_they_are(tmp_path) -> None:
    path = tmp_path / "edsrmini_x2.pth"
    torch.save(slimsr.create_model("edsrmini", 2).net.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        slimsr.create_model("edsrmini", 4, weights=path)
    msg = str(err.value)
    assert "does not fit edsrmini x4" in msg and "looks like edsrmini x2" in msg
    assert "mis-shaped" in msg


def test_unknown_model_and_scale_errors() -> None:
    with pytest.raises(slimsr.UnknownModelError, match="unknown model 'bsrnn'"):
        slimsr.create_model("bsrnn")
    with pytest.raises(slimsr.UnsupportedScaleError, match="not x5"):
        slimsr.create_model("edsrmini", 5)
    assert isinstance(slimsr.UnknownModelError("x"), slimsr.SlimsrError)


def test_written_files_get_normal_permissions(tmp_path) -> None:
    import os

    path = tmp_path / "w.safetensors"
    slimsr.save(small_edsrmini(), path)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_swinir_weights_without_their_masks_reload_to_the_same_state(tmp_path) -> None:
    """Shipped SwinIR files leave out the shifted-window masks; loading rebuilds them exactly."""
    from slimsr.weight_files import save_weights

    torch.manual_seed(0)
    model = slimsr.create_model("swinirmini", 2)
    full = model.net.state_dict()
    rebuilt = [k for k in full if k.endswith(("attn_mask", "relative_position_index"))]
    assert len(rebuilt) == 18  # 12 index tables + 6 masks (odd blocks of 3 RSTBs x 4)
    path = tmp_path / "slim.safetensors"
    save_weights(model.net, path, arch="swinirmini", scale=2, exclude=rebuilt)
    assert not set(rebuilt) & set(read_checkpoint(path).state_dict)
    assert path.stat().st_size < 500_000  # the masks alone are 6 MB
    reloaded = slimsr.load(path).net.state_dict()
    assert reloaded.keys() == full.keys()
    for key in full:
        assert torch.equal(reloaded[key], full[key]), key
    with pytest.raises(CheckpointError, match="cannot exclude"):
        save_weights(
            model.net, tmp_path / "x.safetensors", arch="swinirmini", scale=2, exclude=["nope"]
        )
