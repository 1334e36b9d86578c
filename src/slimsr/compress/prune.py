"""Stage 1: prune the pre-trained model and measure the density d of its deep feature module.

Fine-tuning minimises Charbonnier(SR, HR; eps 1e-3) + lambda * ||theta||_1 (eq. 1 of Jiang et
al. 2024) with OBProx-SG, whose orthant steps leave exact zeros. The density is the fraction of
non-zero weights in the deep feature module as a whole (what sizing uses) and per layer
(written for inspection, with a bar plot when matplotlib is installed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from slimsr.compress.config import CompressConfig
from slimsr.compress.runs import Log, run_stage, stage_dir
from slimsr.compress.specs import CompressionError, spec_for
from slimsr.factory import load
from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.model import SRModel
from slimsr.train import TrainConfig, load_config
from slimsr.train.config import ConfigError
from slimsr.train.trainer import Callback, Trainer

DENSITY_FILE = "density.json"
PLOT_FILE = "density.png"


def density_report(net: nn.Module, name: str) -> dict[str, Any]:
    """Non-zero counts of the deep feature module of `net` (registry model `name`)."""
    spec = spec_for(name)
    layers = []
    all_nonzero = all_total = 0
    for key, p in net.named_parameters():
        nonzero, total = int((p.detach() != 0).sum()), p.numel()
        all_nonzero, all_total = all_nonzero + nonzero, all_total + total
        if spec.is_deep_feature(key):
            layers.append(
                {
                    "name": key,
                    "shape": list(p.shape),
                    "nonzero": nonzero,
                    "total": total,
                    "density": nonzero / total,
                }
            )
    if not layers:
        raise CompressionError(f"{name}: no parameter belongs to its deep feature module")
    nonzero = sum(layer["nonzero"] for layer in layers)
    total = sum(layer["total"] for layer in layers)
    return {
        "model": name,
        "deep_feature_module": spec.deep_feature,
        "density": nonzero / total,
        "nonzero": nonzero,
        "total": total,
        "whole_model_density": all_nonzero / all_total,
        "layers": layers,
    }


def plot_density(report: dict[str, Any], path: Path) -> Path | None:
    """Bar plot of the per-layer density; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(layers)), 3.5))
    ax.bar(range(len(layers)), [layer["density"] for layer in layers], width=0.8)
    ax.axhline(report["density"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("layer (deep feature module, in network order)")
    ax.set_ylabel("density (non-zero / total)")
    ax.set_title(f"{report['model']}: d = {report['density']:.4f} (dashed)")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_density(report: dict[str, Any], run_dir: Path, log: Log) -> Path:
    """density.json (and density.png when there are layers to plot and matplotlib to plot)."""
    plot = None
    if report.get("layers"):
        plot = plot_density(report, run_dir / PLOT_FILE)
        if plot is None:
            log("matplotlib is not installed: per-layer density plot skipped (density.json has it)")
    path = run_dir / DENSITY_FILE
    atomic_write_text(path, json.dumps({**report, "plot": plot and str(plot)}, indent=2) + "\n")
    return path


def given_density(cfg: CompressConfig) -> dict[str, Any]:
    """The density report of a recipe that skips pruning (`prune.density`)."""
    assert cfg.prune.density is not None
    return {
        "model": cfg.model.name,
        "source": "prune.density in the recipe (stage 1 skipped)",
        "density": cfg.prune.density,
        "layers": [],
    }


def prune_train_config(cfg: CompressConfig, *, check_paths: bool = True) -> TrainConfig:
    """The training recipe of stage 1 (a run folder `prune/` inside the compression run)."""
    p, m = cfg.prune, cfg.model
    if p.iterations is None or m.pretrained is None:
        raise ConfigError("stage 1 needs prune.iterations and model.pretrained")
    recipe = {
        "name": "prune",
        "output_dir": str(cfg.run_dir),
        "seed": cfg.seed,
        "device": cfg.device,
        "auto_resume": True,
        "model": {
            "name": m.name,
            "scale": m.scale,
            "kwargs": m.kwargs,
            "pretrained": str(m.pretrained),
            "param_key": m.param_key,
        },
        "data": _prune_data(cfg),
        "train": {
            "iterations": p.iterations,
            "lr": p.lr,
            "optimizer": {
                "type": "obproxsg",
                "lambda_l1": p.lambda_l1,
                "prox_steps": p.iterations // 10 if p.prox_steps is None else p.prox_steps,
                "orthant_steps": p.orthant_steps,
                "eps": p.eps,
            },
            "scheduler": p.scheduler.model_dump(mode="json"),
            "losses": [{"type": "charbonnier", "eps": p.charbonnier_eps}],
            "precision": p.precision,
            "grad_clip": p.grad_clip,
        },
        "logging": cfg.logging.model_dump(mode="json"),
    }
    try:
        return load_config(recipe, check_paths=check_paths)
    except ConfigError as exc:
        raise ConfigError(f"prune stage: {exc}") from None


def _prune_data(cfg: CompressConfig) -> dict[str, Any]:
    """The data section of stage 1: the recipe's, cut to `prune.images` when given."""
    data = cfg.data.model_dump(mode="json")
    if cfg.prune.images is not None:
        data["train"]["max_images"] = cfg.prune.images
    return data


def _density_logger(log: Log) -> Callback:
    def on_event(event: str, trainer: Trainer) -> None:
        if event != "checkpoint" or not trainer.dist.is_main:
            return
        d = density_report(trainer.model.net, trainer.info.name)["density"]
        trainer.log.write("density", iter=trainer.iteration, density=d)
        log(f"prune: iteration {trainer.iteration}, deep-feature density {d:.4f}")

    return on_event


def run_prune(cfg: CompressConfig, log: Log) -> dict[str, Any]:
    """Stage 1: OBProx-SG fine-tuning (resumable), then the density of the pruned weights."""
    config = prune_train_config(cfg)
    result = run_stage("prune", config, log, callbacks=[_density_logger(log)])
    weights = stage_dir(config) / "weights" / "final.safetensors"
    pruned: SRModel = load(weights)
    report = density_report(pruned.net, pruned.name)
    if report["nonzero"] == 0:
        raise CompressionError(
            f"pruning left no non-zero weight in the deep feature module of {weights}: "
            f"prune.lambda_l1 {cfg.prune.lambda_l1:g} is too strong for prune.lr "
            f"{cfg.prune.lr:g}; delete {stage_dir(config)} and lower them"
        )
    return {
        **report,
        "source": "pruned (stage 1)",
        "scale": pruned.scale,
        "kwargs": pruned.kwargs,
        "weights": str(weights),
        "iterations": result.iteration,
        "lambda_l1": cfg.prune.lambda_l1,
    }
