"""The three stages in order, each skipped when its artifact exists, then a report.

    <output_dir>/<name>/
        compress.yaml        the resolved recipe
        prune/               stage 1 training run (OBProx-SG), resumable
        density.json (.png)  stage 1 artifact: d of the deep feature module, per layer
        compact.json         stage 2 artifact: (N_c', N_l', N_b'), the compact model's name/kwargs
        distill/             stage 3 training run (teacher -> student), resumable
        student.safetensors  stage 3 artifact: the compact model (+ .json sidecar)
        report.json          original vs teacher vs compact: params, FLOPs, PSNR/SSIM

Running the same recipe again skips finished stages and resumes an unfinished one. An artifact
that disagrees with the recipe (another density, another compact shape) is an error rather
than silently reused: delete it to redo that stage and the ones after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from slimsr.compress.config import CompressConfig
from slimsr.compress.distill import STUDENT_FILE, distill_train_config, run_distill
from slimsr.compress.prune import (
    DENSITY_FILE,
    given_density,
    prune_train_config,
    run_prune,
    write_density,
)
from slimsr.compress.runs import Log
from slimsr.compress.sizing import CompactPlan, check_density, size_model
from slimsr.compress.specs import CompressionError
from slimsr.data import validation_images
from slimsr.factory import create_model, load
from slimsr.fileio import atomic_write_text
from slimsr.model import SRModel
from slimsr.profile.report import profile_model
from slimsr.registry import get_model_info
from slimsr.train.memory import MemoryEstimate, check_memory
from slimsr.train.validation import evaluate_images

COMPACT_FILE = "compact.json"
REPORT_FILE = "report.json"
FLOPS_OUTPUT_HW = (720, 1280)
"""The paper's Table I counts FLOPs for a 1280x720 output."""


@dataclass
class CompressResult:
    run_dir: Path
    density: float
    plan: CompactPlan
    student: Path
    report: dict[str, Any]
    skipped: list[str]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompressionError(f"{path}: unreadable ({exc}); delete it to redo its stage") from None


def _teacher(cfg: CompressConfig) -> SRModel:
    teacher = load(cfg.teacher, param_key=cfg.teacher_param_key)
    if teacher.scale != cfg.model.scale:
        raise CompressionError(
            f"distill teacher {cfg.teacher} is a x{teacher.scale} model ({teacher.name}); "
            f"the student is x{cfg.model.scale}"
        )
    return teacher


def _stage_density(cfg: CompressConfig, log: Log, skipped: list[str]) -> float:
    path = cfg.run_dir / DENSITY_FILE
    if path.is_file():
        density = check_density(_read_json(path).get("density"))
        given = cfg.prune.density
        if given is not None and abs(given - density) > 1e-12:
            raise CompressionError(
                f"{path} records density {density:g}, the recipe gives {given:g}; delete "
                f"{path} (and {COMPACT_FILE}, {STUDENT_FILE}) to use the new density"
            )
        log(f"stage 1/3 prune: done before ({path}), density d = {density:.4f}")
        skipped.append("prune")
        return density
    if cfg.prune.density is not None:
        report = given_density(cfg)
        log(f"stage 1/3 prune: skipped, density d = {cfg.prune.density:g} given by the recipe")
    else:
        log(f"stage 1/3 prune: OBProx-SG fine-tuning of {cfg.model.name} x{cfg.model.scale}")
        report = run_prune(cfg, log)
    write_density(report, cfg.run_dir, log)
    log(f"stage 1/3 prune: density d = {report['density']:.4f} -> {path}")
    return float(report["density"])


def _stage_size(cfg: CompressConfig, density: float, log: Log, skipped: list[str]) -> CompactPlan:
    info = get_model_info(cfg.model.name)
    with torch.device("meta"):  # sizing reads shapes only
        net = info.build(cfg.model.scale, **cfg.model.kwargs)
    plan = size_model(SRModel(net, info, cfg.model.scale, cfg.model.kwargs), density)
    record = {**plan.as_dict(), "density_file": str(cfg.run_dir / DENSITY_FILE)}
    path = cfg.run_dir / COMPACT_FILE
    s = plan.sizing
    shape = (
        f"(N_c, N_l, N_b) = ({s.original.channels}, {s.original.layers}, {s.original.blocks}) -> "
        f"({s.compact.channels}, {s.compact.layers}, {s.compact.blocks})"
    )
    if path.is_file():
        saved = _read_json(path)
        if saved.get("compact") != json.loads(json.dumps(record["compact"])):
            raise CompressionError(
                f"{path} records {saved.get('compact')}, the recipe and density now give "
                f"{record['compact']}; delete {path} and {STUDENT_FILE} to redo stages 2-3"
            )
        log(f"stage 2/3 size: done before ({path}), {shape}")
        skipped.append("size")
        return plan
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    log(
        f"stage 2/3 size: {shape}: {plan.compact_name} {plan.compact_kwargs or ''} "
        f"({plan.params['compact']:,} params, {plan.params['original']:,} before) -> {path}"
    )
    return plan


def _stage_distill(cfg: CompressConfig, plan: CompactPlan, log: Log, skipped: list[str]) -> Path:
    path = cfg.run_dir / STUDENT_FILE
    if path.is_file():
        student = load(path)
        if student.name != plan.compact_name or student.kwargs != plan.compact_kwargs:
            raise CompressionError(
                f"{path} is {student.name} {student.kwargs}, not the compact model "
                f"{plan.compact_name} {plan.compact_kwargs}; delete it to redo stage 3"
            )
        log(f"stage 3/3 distill: done before ({path})")
        skipped.append("distill")
        return path
    log(
        f"stage 3/3 distill: {plan.compact_name} x{cfg.model.scale} "
        f"{'from ' + str(cfg.distill.student_init) if cfg.distill.student_init else 'from scratch'}"
        f", teacher {cfg.teacher}"
    )
    extra = {
        "original": {"model": plan.original_name, "kwargs": plan.original_kwargs},
        "density": plan.sizing.density,
        "dims": plan.sizing.compact.as_dict(),
        "teacher": str(cfg.teacher),
        "recipe": cfg.name,
    }
    written = run_distill(cfg, plan.compact_name, plan.compact_kwargs, log, extra)
    log(f"stage 3/3 distill: student -> {written}")
    return written


def _row(role: str, model: SRModel, weights: Path | None, val: Any, cfg: CompressConfig) -> dict:
    prof = profile_model(model, output_hw=FLOPS_OUTPUT_HW, runtime=False, memory=False)
    row: dict[str, Any] = {
        "role": role,
        "model": model.name,
        "kwargs": model.kwargs,
        "weights": None if weights is None else str(weights),
        "params": prof.params,
        "flops": dict(prof.complexity.flops),
        "psnr": None,
        "ssim": None,
    }
    if weights is not None and val is not None:
        metrics = evaluate_images(model, val, cfg.model.scale, protocol=cfg.data.val.protocol)
        row.update(psnr=metrics["psnr"], ssim=metrics["ssim"])
    return row


def build_report(
    cfg: CompressConfig, plan: CompactPlan, student_path: Path, teacher: SRModel
) -> dict[str, Any]:
    """Params, FLOPs (every convention, 1280x720 output) and validation PSNR/SSIM."""
    val = None
    val_set = None
    if cfg.data.val is not None:
        v = cfg.data.val
        val_set, val = validation_images(
            cfg.model.scale, root=v.root, hr=v.hr, lr=v.lr, lr_mode=v.lr_mode
        )
    m = cfg.model
    original = create_model(m.name, m.scale, m.pretrained, param_key=m.param_key, **m.kwargs)
    rows = [_row("original", original, m.pretrained, val, cfg)]
    if cfg.distill.teacher is not None:
        rows.append(_row("teacher", teacher, cfg.teacher, val, cfg))
    rows.append(_row("compact", load(student_path), student_path, val, cfg))
    s = plan.sizing
    return {
        "recipe": cfg.name,
        "scale": cfg.model.scale,
        "density": s.density,
        "dims": {"original": s.original.as_dict(), "compact": s.compact.as_dict()},
        "flops_output_hw": list(FLOPS_OUTPUT_HW),
        "flops_note": "per convention (see slimsr.profile); the paper's FLOPs are 'macs'",
        "validation": None
        if val_set is None
        else {"set": val_set, "protocol": cfg.data.val.protocol, "images": len(val)},
        "models": rows,
    }


def _planned_student(cfg: CompressConfig) -> tuple[str, dict[str, Any]]:
    """The compact model when the density is known up front, else the original (an upper
    bound of the student's size, for the memory estimate)."""
    if cfg.prune.density is None:
        return cfg.model.name, cfg.model.kwargs
    info = get_model_info(cfg.model.name)
    with torch.device("meta"):
        net = info.build(cfg.model.scale, **cfg.model.kwargs)
    plan = size_model(SRModel(net, info, cfg.model.scale, cfg.model.kwargs), cfg.prune.density)
    return plan.compact_name, plan.compact_kwargs


def check_stages_memory(cfg: CompressConfig) -> list[tuple[str, MemoryEstimate]]:
    """Each training stage's memory estimate, or a one-line error for the first that does not
    fit this machine (naming the `--set data.train.batch_size` that does)."""
    stages = []
    if cfg.prune.density is None:
        stages.append(("prune", prune_train_config(cfg)))
    stages.append(("distill", distill_train_config(cfg, *_planned_student(cfg))))
    return [(s, check_memory(c, what=f"{cfg.name} ({s} stage)")) for s, c in stages]


def compress(cfg: CompressConfig, log: Log = print) -> CompressResult:
    """Run (or continue) the whole workflow of a recipe; see the module docstring."""
    teacher = _teacher(cfg)  # a teacher of the wrong scale fails before anything runs
    # recipe problems of both training stages (data, patch size, memory) surface before any work
    check_stages_memory(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    header = "# resolved by slimsr compress: every default written out\n"
    atomic_write_text(
        run_dir / "compress.yaml",
        header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
    )
    skipped: list[str] = []
    density = _stage_density(cfg, log, skipped)
    plan = _stage_size(cfg, density, log, skipped)
    student = _stage_distill(cfg, plan, log, skipped)
    report = build_report(cfg, plan, student, teacher)
    atomic_write_text(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return CompressResult(run_dir, density, plan, student, report, skipped)
