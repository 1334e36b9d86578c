"""Recipes: strict keys with file:line errors, overrides, validation, schema, shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slimsr.train import ConfigError, config_hash, dump_config, json_schema, load_config
from slimsr.train.config import AdamaxConfig, CosineSchedule, MultiStepSchedule
from tests.train_utils import tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def write_recipe(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


def recipe_text(tmp: Path) -> str:
    return yaml.safe_dump(tiny_recipe(tmp), sort_keys=False)


def error_of(path: Path | dict, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    text = recipe_text(tmp_path).replace("  lr: 0.001\n", "  lr: 0.001\n  lr_sheduler: 3\n")
    path = write_recipe(tmp_path, text)
    msg = error_of(path)
    assert msg == (
        f"{path}:{line_of(text, 'lr_sheduler')}: train.lr_sheduler: unknown key "
        "(did you mean 'scheduler'?)"
    )
    # inside a tagged union (the optimiser): the tag is not part of the key path
    text = recipe_text(tmp_path).replace(
        "  iterations: 8\n",
        "  iterations: 8\n  optimizer:\n    type: adamw\n    betass: [0.9, 0.99]\n",
    )
    path = write_recipe(tmp_path, text)
    assert error_of(path) == (
        f"{path}:{line_of(text, 'betass')}: train.optimizer.betass: unknown key "
        "(did you mean 'betas'?)"
    )


def test_bad_values_duplicates_and_yaml_errors(tmp_path: Path) -> None:
    text = recipe_text(tmp_path).replace("patch_size: 8", "patch_size: -8")
    path = write_recipe(tmp_path, text)
    assert error_of(path).startswith(
        f"{path}:{line_of(text, 'patch_size')}: data.train.patch_size:"
    )
    text = recipe_text(tmp_path).replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.002\n")
    path = write_recipe(tmp_path, text)
    assert error_of(path) == f"{path}:{line_of(text, 'lr: 0.002')}: train.lr: duplicate key"
    path = write_recipe(tmp_path, recipe_text(tmp_path).replace("scale: 2", "scale: [2"))
    assert "invalid YAML" in error_of(path) and f"{path}:" in error_of(path)
    text = recipe_text(tmp_path).replace("scale: 2", "scale: 8")
    path = write_recipe(tmp_path, text)
    assert error_of(path) == (
        f"{path}:{line_of(text, 'scale: 8')}: model.scale: edsrmini provides scales 2, 3, 4, not 8"
    )
    text = recipe_text(tmp_path).replace("name: edsrmini", "name: edsr_mini_typo")
    assert "unknown model 'edsr_mini_typo'" in error_of(write_recipe(tmp_path, text))


def test_missing_folder_is_named_with_its_line(tmp_path: Path) -> None:
    text = recipe_text(tmp_path).replace(str(tmp_path / "train_hr"), str(tmp_path / "nope"))
    path = write_recipe(tmp_path, text)
    assert error_of(path) == (
        f"{path}:{line_of(text, 'nope')}: data.train.sources[0].hr: folder not found: "
        f"{tmp_path / 'nope'}"
    )
    # without the path check (schema tests, resuming elsewhere) the same recipe validates
    assert load_config(path, check_paths=False).data.train.sources[0].hr == tmp_path / "nope"


def test_overrides_types_and_errors(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, recipe_text(tmp_path))
    cfg = load_config(
        path,
        [
            "train.lr=2e-4",
            "train.optimizer={type: adamax, betas: [0.9, 0.99]}",
            "train.scheduler.type=multistep",
            "train.scheduler.milestones=[4, 6]",
            "data.train.sources.0.lr=null",
        ],
    )
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.optimizer, AdamaxConfig) and cfg.train.optimizer.betas == (
        0.9,
        0.99,
    )
    assert isinstance(cfg.train.scheduler, MultiStepSchedule)
    assert error_of(path, "train.lerning_rate=1") == (
        "--set train.lerning_rate: train.lerning_rate: unknown key"
    )
    assert error_of(path, "train.optimizer.type=sgd").startswith("--set train.optimizer.type: ")
    assert "expected KEY.PATH=VALUE" in error_of(path, "train.lr")
    assert error_of(
        path, "train.scheduler.type=multistep", "train.scheduler.milestones=[4, 9]"
    ) == (
        "--set train.scheduler.milestones: train.scheduler.milestones go past train.iterations (8)"
    )


def test_cross_field_checks(tmp_path: Path) -> None:
    base = tiny_recipe(tmp_path)
    swin = {**base, "model": {"name": "swinirmini", "scale": 2}}
    assert "patch_size 12 must be a multiple of 8 for swinirmini" in error_of(
        swin, "data.train.patch_size=12"
    )
    assert "fp16 is not supported by swinirmini" in error_of(
        {**swin, "data": {**base["data"], "train": {**base["data"]["train"], "patch_size": 16}}},
        "train.precision=fp16",
    )
    assert "at least" in error_of(base, "data.train.sources=[]")
    assert "give exactly one of root and hr" in error_of(base, f"data.val.root={tmp_path}")
    assert "restart_weights" in error_of(
        base, "train.scheduler={type: cosine, periods: [4, 4], restart_weights: [1.0]}"
    )


def test_resolved_config_round_trips_with_the_same_hash(tmp_path: Path) -> None:
    cfg = load_config(tiny_recipe(tmp_path))
    saved = tmp_path / "resolved.yaml"
    saved.write_text(dump_config(cfg))
    again = load_config(saved)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(tiny_recipe(tmp_path), ["train.lr=0.5"])) != config_hash(cfg)
    # defaults are written out, relative paths were made absolute
    text = saved.read_text()
    assert "max_nonfinite_steps: 10" in text and "small_images: skip" in text
    rel = load_config({**tiny_recipe(tmp_path), "output_dir": "runs"}, base_dir=tmp_path)
    assert rel.output_dir == tmp_path / "runs"


def test_schema_is_strict_everywhere() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert {"AdamConfig", "CosineSchedule", "CharbonnierLossConfig", "SourceConfig"} <= set(defs)
    assert all(d.get("additionalProperties") is False for d in defs.values() if "properties" in d)
    optimizer = defs["OptimConfig"]["properties"]["optimizer"]
    assert optimizer["discriminator"]["propertyName"] == "type"


PAPER = {  # recipe: (model, batch, LR patch, lr, iterations, schedule check)
    "edsr_baseline_x2": ("edsr_baseline", 16, 48, 1e-4, 300_000, [200_000]),
    "swinir_s_x2": ("swinir_s", 64, 64, 2e-4, 500_000, [250_000, 400_000, 450_000, 475_000]),
    "fmen_x4": ("fmen_train", 64, 64, 5e-4, 3_000_000, [600_000, 1_200_000, 1_800_000, 2_400_000]),
    "fmen_s_x4": (
        "fmen_s_train",
        64,
        64,
        5e-4,
        3_000_000,
        [600_000, 1_200_000, 1_800_000, 2_400_000],
    ),
    "bsrn_x2": ("bsrn", 64, 48, 1e-3, 1_000_000, "cosine"),
    "bsrn_s_x4": ("bsrn_s", 256, 64, 2e-3, 1_500_000, "cosine"),
    "abpn_x3": ("abpn", 16, 64, 1e-3, 600_000, [120_000, 240_000, 360_000, 480_000]),
    "e_rfdn_x4": ("e_rfdn", 64, 64, 5e-4, 1_000_000, [200_000, 400_000, 600_000, 800_000]),
}


RECIPES = [
    *(
        f"{family}_x{s}"
        for family in ("edsr_baseline", "swinir_s", "fmen", "bsrn")
        for s in (2, 3, 4)
    ),
    "fmen_s_x4",
    "bsrn_s_x4",
    "abpn_x3",
    "e_rfdn_x4",
    "bsrn_s_x4_quick_cpu",
]


def test_shipped_recipes_validate_and_follow_the_papers() -> None:
    set5 = (REPO.parent / "shared" / "datasets" / "Set5").resolve()
    for stem in RECIPES:
        cfg = load_config(REPO / "configs" / f"{stem}.yaml", check_paths=False, base_dir=REPO)
        assert cfg.name == stem
        assert cfg.data.val is not None and cfg.data.val.root == set5, stem
        assert [s.hr.parent.name for s in cfg.data.train.sources] == ["T91", "BSD200"], stem
        assert all(s.lr is None for s in cfg.data.train.sources)  # LR made on the fly
        assert cfg.model.scale == int(stem.split("_x")[1][0])
    for stem, (model, batch, patch, lr, iters, sched) in PAPER.items():
        cfg = load_config(REPO / "configs" / f"{stem}.yaml", check_paths=False, base_dir=REPO)
        assert (cfg.model.name, cfg.data.train.batch_size, cfg.data.train.patch_size) == (
            model,
            batch,
            patch,
        ), stem
        assert (cfg.train.lr, cfg.train.iterations) == (lr, iters), stem
        assert [loss.type for loss in cfg.train.losses] == ["l1"]
        if sched == "cosine":
            assert isinstance(cfg.train.scheduler, CosineSchedule)
        else:
            assert isinstance(cfg.train.scheduler, MultiStepSchedule)
            assert cfg.train.scheduler.milestones == sched and cfg.train.scheduler.gamma == 0.5


def test_relative_teacher_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain training recipe with a `distill:` section names its teacher relative to where
    `slimsr train` runs, like every other path; the saved config then works from anywhere."""
    (tmp_path / "teachers").mkdir()
    (tmp_path / "teachers" / "t.safetensors").write_bytes(b"")
    data = tiny_recipe(tmp_path)
    data["distill"] = {"teacher": "teachers/t.safetensors"}
    monkeypatch.chdir(tmp_path)
    cfg = load_config(data)
    assert cfg.distill is not None
    assert cfg.distill.teacher == tmp_path / "teachers" / "t.safetensors"
    monkeypatch.chdir(REPO)
    message = error_of(data)  # from elsewhere the relative name points nowhere
    assert "distill.teacher" in message and "not found" in message
