"""The training loop: a `TrainConfig` in, a run folder out.

    runs/<name>/config.yaml       the resolved recipe (every default written out)
    runs/<name>/train.jsonl       events: start, train (loss, lr, it/s, data wait), val, ...
    runs/<name>/tb/               TensorBoard scalars (when tensorboard is installed)
    runs/<name>/checkpoints/      iter_XXXXXXXX.pt training states (newest few kept)
    runs/<name>/weights/          final/best .safetensors + JSON sidecars (+ _deploy for FMEN)

Order of work: everything that can fail because of the user's input (recipe, data folders,
image pairs, pretrained weights, the run folder's state, the checkpoint to resume) is checked
before the run folder is created, so a bad input leaves nothing behind.

Exact resume: the model, EMA, optimiser, grad scaler and every random generator are restored;
the learning rate is a pure function of the iteration; the data stream is a pure function of
(seed, iteration) (see `slimsr.data.sampler`). Stopping after N/2 iterations and resuming gives
the weights of N straight iterations, bit for bit.
"""

from __future__ import annotations

import gc
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slimsr.data import IterationSampler, PatchDataset, training_store, validation_images
from slimsr.errors import SlimsrError
from slimsr.factory import create_model, load
from slimsr.fileio import atomic_write_text
from slimsr.model import SRModel
from slimsr.quant.qat import QATNet, calibrate, prepare_qat, qat_net
from slimsr.train import distributed as ddp
from slimsr.train.config import TrainConfig
from slimsr.train.ema import EMA
from slimsr.train.fastpath import (
    StepPlan,
    apply_plan,
    as_input,
    optimizer_kwargs,
    resolve_plan,
    step_forward,
)
from slimsr.train.losses import WeightedLoss
from slimsr.train.memory import (
    PREFETCH_FACTOR,
    InsufficientMemoryError,
    check_memory,
    effective_workers,
)
from slimsr.train.optim import build_optimizer, has_own_step, trainable_parameters
from slimsr.train.recipe import config_hash, dump_config
from slimsr.train.resume import (
    check_same_data,
    check_same_teacher,
    data_moved,
    find_resume_state,
    finished_run,
)
from slimsr.train.run_weights import write_run_weights
from slimsr.train.runlog import ConsoleView, EventLog, Scalars
from slimsr.train.schedules import build_schedule
from slimsr.train.teacher import Teacher
from slimsr.train.threads import check_cpu_load
from slimsr.train.training_state import (
    ResumeError,
    checkpoint_path,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from slimsr.train.validation import evaluate_images
from slimsr.weight_files import load_matching

Callback = Callable[[str, "Trainer"], None]
"""Called with an event name ("step", "checkpoint", "validation") after it happens."""


class TrainingDivergedError(SlimsrError):
    """The loss or gradients stayed NaN/Inf for too many steps in a row."""


@dataclass
class _Window:
    """Running sums between two report lines."""

    n: int = 0
    good: int = 0
    loss: float = 0.0
    wait: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, stats: dict[str, Any]) -> None:
        self.n += 1
        if not stats["bad"]:
            self.good += 1
            self.loss += stats["loss"]


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    interrupted: bool = False
    weights: list[Path] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    best: dict[str, Any] | None = None
    finished_before: bool = False
    """Resumed a run that had already finished: nothing was run or written."""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _ignore_signals(_: int) -> None:
    """DataLoader workers leave Ctrl-C / SIGTERM to the main process, which saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


LEGACY_PLAN: dict[str, Any] = {
    "memory_format": "contiguous",
    "attention": "math",
    "optimizer_impl": "for_loop",
    "compile": False,
}
"""How runs checkpointed before `fast_path` existed computed (torch's CPU default loop)."""


class Trainer:
    """Runs one recipe. `resume`: None follows `config.auto_resume`; True requires a state."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.resume = resume
        self.callbacks = list(callbacks)
        self.iteration = 0
        self.run_dir = Path(config.output_dir) / config.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.best: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] | None = None
        self._stop_signal: int | None = None
        self._nonfinite_streak = 0
        self.teacher: Teacher | None = None

    @property
    def teacher_record(self) -> dict[str, Any] | None:
        """What the run records of its distillation teacher (path, sha256, model, params)."""
        return None if self.teacher is None else self.teacher.record

    # -- setup -----------------------------------------------------------------------------------

    def _build(self, state: dict[str, Any] | None = None) -> None:
        """Everything a step needs; `state`: the checkpoint being resumed (for its fast path)."""
        cfg = self.config
        dist = self.dist
        dcfg = cfg.data.train
        if dcfg.batch_size % dist.world_size:
            raise SlimsrError(
                f"data.train.batch_size {dcfg.batch_size} is not divisible by the "
                f"{dist.world_size} processes"
            )
        _seed_all(cfg.seed)
        self.store = training_store(
            [(s.hr, s.lr) for s in dcfg.sources],
            cfg.model.scale,
            dcfg.patch_size,
            lr_mode=dcfg.lr_mode,
            cache=dcfg.cache,
            small_images=dcfg.small_images,
            max_images=dcfg.max_images,
        )
        self.val_images: list = []
        self.val_source = ""
        if cfg.data.val is not None:
            v = cfg.data.val
            self.val_source, self.val_images = validation_images(
                cfg.model.scale, root=v.root, hr=v.hr, lr=v.lr, lr_mode=v.lr_mode
            )
        m = cfg.model
        strict_init = m.pretrained is not None and m.pretrained_strict
        model = create_model(
            m.name,
            m.scale,
            weights=m.pretrained if strict_init else None,
            param_key=m.param_key,
            **m.kwargs,
        )
        self.init_report: dict[str, int] | None = None
        if m.pretrained is not None and not strict_init:
            source = load(m.pretrained, param_key=m.param_key)
            copied, skipped = load_matching(
                model.net, source.net.state_dict(), f"model.pretrained {m.pretrained}"
            )
            self.init_report = {"copied_tensors": len(copied), "skipped_tensors": len(skipped)}
        self.model: SRModel = model.to(dist.device).train()
        self.info = model.info
        self._prepare_qat()
        self.params = trainable_parameters(self.model.net)
        o = cfg.train
        # a resumed run keeps the fast path it started with (a run saved before there was
        # one: the layout, kernels and loop that made it), so it continues exactly
        saved_plan = None if state is None else state.get("fast_path") or LEGACY_PLAN
        self._set_plan(self._resolve_plan(saved_plan))
        self.schedule = build_schedule(o.scheduler, o.iterations, o.lr)
        self.loss_fn = WeightedLoss(o.losses)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.precision)
        d = cfg.distill
        self.teacher = Teacher(d, m.scale, o.precision, dist.device) if d is not None else None
        self.ema = EMA(self.model.net, o.ema.decay, o.ema.start_iter) if o.ema else None
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=o.precision == "fp16")
        self.forward: torch.nn.Module = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        self.step_forward = step_forward(self.forward, self.plan)

    def _resolve_plan(self, saved: dict[str, Any] | None) -> StepPlan:
        o = self.config.train
        return resolve_plan(
            o.fast_path.model_dump(),
            self.info,
            self.model.net,
            self.dist.device,
            has_own_step(o.optimizer),
            saved,
            # QAT's observers switch off mid-run: "auto" never compiles it
            iterations=0 if self.qat_freeze is not None else o.iterations,
        )

    def _set_plan(self, plan: StepPlan) -> None:
        """Apply `plan` to the network and (re)build the optimiser for it (no state yet)."""
        o = self.config.train
        self.plan = plan
        apply_plan(self.model.net, plan)
        self.optimizer = build_optimizer(self.params, o.optimizer, o.lr, optimizer_kwargs(plan))

    def _add_distillation(
        self,
        lr_img: Tensor,
        sr: Tensor,
        gt_loss: Tensor,
        terms: dict[str, Tensor],
        teacher_img: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """alpha * ground-truth loss + L_lap(s, t) + L_lap(HF(s), HF(t)); teacher frozen.

        t is the cached teacher patch (`teacher_img`, float16) or, without the cache, the
        teacher run on this batch."""
        assert self.config.distill is not None and self.teacher is not None
        teacher_sr = self.teacher.target(lr_img, teacher_img)
        dis, dis_terms = self.teacher.loss(sr, teacher_sr)
        return self.config.distill.alpha * gt_loss + dis, {**terms, **dis_terms}

    def _prepare_qat(self) -> None:
        """`quant.qat`: train through fake quantisation, ranges calibrated on training patches.

        The calibration patches come from their own seed, so the training data stream (and
        exact resume) is unchanged; on resume the checkpoint's ranges replace these.
        """
        q = self.config.quant
        self.qat_freeze: int | None = None
        if q is None or not q.qat:
            return
        self.model = prepare_qat(self.model, q.range_decay).to(self.dist.device).train()
        d = self.config.data.train
        patches = PatchDataset(self.store, d.patch_size, self.config.seed + 7_777_777)
        n = len(self.store)
        batches = (
            torch.stack(
                [patches[(k % n, k)][0] for k in range(b * d.batch_size, (b + 1) * d.batch_size)]
            )
            for b in range(q.calibration_batches)
        )
        calibrate(self.model, batches)
        self.qat_freeze = q.freeze_ranges_iter

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        moved = data_moved(self.run_dir, self.config)
        check_same_data(path, state, len(self.store), self.store.images_sha256, moved)
        try:
            self.model.net.load_state_dict(state["params"], strict=True)
            if self.ema is not None:
                self.ema.load_state_dict(state["params_ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise ResumeError(f"{path}: does not fit this run ({first})") from None
        self.iteration = int(state["iteration"])
        self.best = state.get("best")
        self._nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self._pending_rng = state["rng"]
        check_same_teacher(path, state, self.teacher_record)

    def _make_loader(self) -> Iterator[tuple[Tensor, ...]]:
        d = self.config.data.train
        dist = self.dist
        self.sampler = IterationSampler(
            len(self.store),
            d.batch_size,
            self.config.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            start_iteration=self.iteration,
        )
        dataset = PatchDataset(
            self.store,
            d.patch_size,
            self.config.seed,
            flip=d.flip,
            rot90=d.rot90,
            teacher=None if self.teacher is None else self.teacher.outputs,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.sampler.local_batch,
            sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=dist.device.type == "cuda",
            worker_init_fn=_ignore_signals if self.num_workers else None,
            persistent_workers=False,
            prefetch_factor=PREFETCH_FACTOR if self.num_workers else None,
            # its own generator: creating the iterator must not draw from the global torch RNG
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return iter(loader)

    # -- one step --------------------------------------------------------------------------------

    def train_step(
        self, lr_img: Tensor, hr_img: Tensor, teacher_img: Tensor | None = None
    ) -> dict[str, Any]:
        """One optimiser step at `self.iteration` (0-based); returns its statistics.

        `teacher_img`: the cached teacher patches of a distillation run (else the teacher, if
        any, runs on `lr_img`)."""
        o = self.config.train
        device = self.dist.device
        lr_img = as_input(lr_img.to(device, non_blocking=True), self.plan)
        hr_img = hr_img.to(device, non_blocking=True)
        lr_now = o.lr * self.schedule(self.iteration)
        if self.qat_freeze is not None:
            qat_net(self.model).set_observe(self.iteration < self.qat_freeze)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            sr = self.step_forward(lr_img)
        loss, terms = self.loss_fn(sr, hr_img)
        if self.config.distill is not None:
            loss, terms = self._add_distillation(lr_img, sr, loss, terms, teacher_img)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if o.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        elif grads:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
        else:
            grad_norm = torch.zeros(())
        loss_mean = ddp.all_mean(loss.detach(), self.dist)
        loss_value = float(loss_mean)
        finite = math.isfinite(loss_value) and math.isfinite(float(grad_norm))
        if self.scaler.is_enabled():
            # fp16: the scaler skips steps whose gradients overflow while it calibrates; only
            # a non-finite loss counts as a bad step.
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale_before and finite
            bad = not math.isfinite(loss_value)
        else:
            stepped = finite
            bad = not finite
            if finite:
                self.optimizer.step()
        if stepped and self.ema is not None:
            self.ema.update(self.model.net, self.iteration)
        self._nonfinite_streak = self._nonfinite_streak + 1 if bad else 0
        return {
            "loss": loss_value,
            "terms": {k: float(v) for k, v in terms.items()},
            "lr": lr_now,
            "grad_norm": float(grad_norm),
            "skipped": not stepped,
            "bad": bad,
        }

    # -- validation / checkpoints / weights -----------------------------------------------------

    def eval_model(self) -> SRModel:
        """The network that is validated and written out: the EMA if there is one."""
        if self.ema is None:
            return self.model
        return SRModel(self.ema.net, self.info, self.model.scale, self.model.kwargs)

    def validate(self) -> dict[str, float] | None:
        if not self.val_images:
            return None
        v = self.config.data.val
        assert v is not None
        return evaluate_images(
            self.eval_model(),
            self.val_images,
            self.model.scale,
            protocol=v.protocol,
            device=self.dist.device,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "params": self.model.net.state_dict(),
            "params_ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "type": self.config.train.scheduler.type,
                "base_lr": self.config.train.lr,
                "lr": self.config.train.lr * self.schedule(max(self.iteration - 1, 0)),
                "note": "the learning rate is a function of the iteration",
            },
            "scaler": self.scaler.state_dict(),
            "data": {
                **self.sampler.state(self.iteration),
                "images_sha256": self.store.images_sha256,
            },
            "best": self.best,
            "nonfinite_streak": self._nonfinite_streak,
            "config_sha256": self.config_sha256,
            "world_size": self.dist.world_size,
            "teacher": self.teacher_record,
            "fast_path": self.plan.as_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        """Write the training state (rank 0); every rank contributes its RNG state."""
        rngs = [rng_state()]
        if self.dist.enabled:
            import torch.distributed as tdist

            gathered: list[Any] | None = (
                [None] * self.dist.world_size if self.dist.is_main else None
            )
            tdist.gather_object(rngs[0], gathered, dst=0)
            rngs = gathered or []
        path = None
        if self.dist.is_main:
            state = self.state_dict()
            state["rng"] = rngs
            path = save_state(
                state,
                checkpoint_path(self.ckpt_dir, self.iteration),
                keep=self.config.logging.keep_checkpoints,
            )
            self.log.write("checkpoint", iter=self.iteration, path=path)
        self._last_saved = self.iteration
        self._fire("checkpoint")
        return path

    def write_weights(self, stem: str, metrics: dict[str, float] | None) -> list[Path]:
        net = self.eval_model().net
        extra = {
            "training": {
                "run": self.config.name,
                "config_sha256": self.config_sha256,
                "iteration": self.iteration,
                "weights": "ema" if self.ema is not None else "params",
                "train_images": len(self.store),
                **({"teacher": self.teacher_record} if self.teacher_record else {}),
                "validation": (
                    {
                        "set": self.val_source,
                        "protocol": self.config.data.val.protocol,
                        **metrics,
                    }
                    if metrics is not None and self.config.data.val is not None
                    else None
                ),
            }
        }
        if isinstance(net, QATNet):  # the float weights, with the INT8 ranges beside them
            extra["quantization"] = net.export_ranges()
            net = net.net
        return write_run_weights(
            net,
            self.info,
            self.model.scale,
            dict(self.model.kwargs),
            self.run_dir / "weights" / f"{stem}.safetensors",
            extra,
        )

    def _fire(self, event: str) -> None:
        for callback in self.callbacks:
            callback(event, self)

    # -- the loop --------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self._stop_signal = signum

    def run(self) -> TrainResult:
        self.dist = ddp.setup(self.config.device)
        try:
            result = self._run()
        except BaseException:
            self._release_ddp()
            ddp.teardown(self.dist, finished=False)
            raise
        self._release_ddp()
        ddp.teardown(self.dist)
        return result

    def _release_ddp(self) -> None:
        """Free the DDP wrapper (its reducer holds gloo work and threads) before the process
        group goes: destroyed the other way round, a rank can abort at exit ("terminate called
        without an active exception", seen under load in CI even after the barrier)."""
        if getattr(self, "forward", None) not in (None, getattr(self, "model", None)):
            self.forward = self.model
            self.step_forward = step_forward(self.forward, self.plan)
            gc.collect()

    def _check_memory(self) -> None:
        """Refuse a run that would not fit, on every rank together (none is left waiting)."""
        refused: InsufficientMemoryError | None = None
        try:
            check_memory(self.config)
        except InsufficientMemoryError as exc:
            refused = exc
        if ddp.any_rank(refused is not None, self.dist):
            raise refused or InsufficientMemoryError("another process of this run is out of memory")

    def _run(self) -> TrainResult:
        cfg = self.config
        dist = self.dist
        resume_from = find_resume_state(self.run_dir, cfg, self.resume)
        if resume_from is not None:
            # a run that reached its iterations and wrote its weights: nothing is rebuilt or
            # written, so final.json keeps its validation metrics and every file stays the same
            done = finished_run(self.run_dir, cfg.train.iterations)
            if done is not None:
                at, weights = done
                return TrainResult(self.run_dir, at, weights=weights, finished_before=True)
        self._check_memory()
        # read before this process works: its own threads would count as other load
        cpu_load = check_cpu_load() if dist.device.type == "cpu" else None
        self.num_workers, workers_note = effective_workers(cfg.data.train.num_workers)
        self._pending_rng: list[Any] | None = None
        state = load_state(resume_from) if resume_from is not None else None
        self._build(state)
        if resume_from is not None and state is not None:
            self._restore(resume_from, state)
        del state
        # written outside the run folder, after every input check: a derived file that is
        # valid on its own (shared by runs of the same teacher and data)
        if self.teacher is not None:
            self.teacher.prepare_cache(
                self.store,
                cfg.output_dir,
                cfg.data.train.lr_mode,
                dist,
                progress=cfg.logging.progress != "none",
            )
        self.config_sha256 = config_hash(cfg)
        data_iter = self._make_loader()
        # the training RNG stream: per rank, and restored exactly on resume
        if self._pending_rng is not None:
            rngs = self._pending_rng
            set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
        else:
            _seed_all(cfg.seed + 7919 * dist.rank)

        # -- nothing was written before this point --
        self.log = EventLog(None)
        self.scalars = Scalars(None, False)
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "weights").mkdir(exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
            self.log = EventLog(self.run_dir / "train.jsonl")
            self.scalars = Scalars(self.run_dir / "tb", cfg.logging.tensorboard)
        total = cfg.train.iterations
        view = ConsoleView(cfg.logging.progress, total, self.iteration, enabled=dist.is_main)
        self._last_saved = self.iteration if resume_from is not None else -1
        start_info = {
            "iter": self.iteration,
            "iterations": total,
            "resumed_from": resume_from,
            "model": cfg.model.name,
            "scale": cfg.model.scale,
            "params": self.model.num_parameters(),
            "train_images": len(self.store),
            "train_images_sha256": self.store.images_sha256,
            "skipped_small_images": len(self.store.skipped),
            "cache_mb": round(self.store.nbytes / 2**20, 1),
            "decode_s": round(self.store.seconds, 2),
            "global_batch": cfg.data.train.batch_size,
            "world_size": dist.world_size,
            "device": str(dist.device),
            "precision": cfg.train.precision,
            "fast_path": self.plan.as_dict(),
            "config_sha256": self.config_sha256,
        }
        if cpu_load is not None:
            start_info["cpu_load"] = cpu_load.as_dict()
        if self.init_report is not None:
            start_info["partial_init"] = self.init_report
        if self.teacher_record is not None:
            start_info["teacher"] = self.teacher_record
        teacher_cache = None if self.teacher is None else self.teacher.cache_report
        if teacher_cache is not None:
            start_info["teacher_cache"] = teacher_cache
        self.log.write("resume" if resume_from else "start", **start_info)
        view.report(
            f"{'resuming' if resume_from else 'training'} {cfg.model.name} x{cfg.model.scale} "
            f"({start_info['params']:,} params) at iteration {self.iteration}/{total}: "
            f"{len(self.store)} images ({start_info['cache_mb']} MB cached"
            + (
                f", {len(self.store.skipped)} smaller than a patch left out"
                if self.store.skipped
                else ""
            )
            + f"), global batch {cfg.data.train.batch_size} on {dist.world_size} x {dist.device}"
            + f", {cfg.train.precision} -> {self.run_dir}"
        )
        if self.init_report is not None and resume_from is None:
            r = self.init_report
            view.report(
                f"initialised from {cfg.model.pretrained}: {r['copied_tensors']} tensors copied, "
                f"{r['skipped_tensors']} left at their fresh initialisation or unused"
            )
        if teacher_cache is not None:
            tc = teacher_cache
            view.report(
                f"teacher outputs {'computed' if tc['built'] else 'reused'}: {tc['images']} "
                f"images, {tc['mb']} MB float16 in {tc['path']}"
                + (f" ({tc['seconds']:.0f} s)" if tc["built"] else "")
            )
        if self.scalars.unavailable:
            view.report("tensorboard is not installed: scalars go to train.jsonl only")
        if workers_note is not None:
            view.report(workers_note)
        if cpu_load is not None and cpu_load.warning is not None and dist.is_main:
            # shown even with logging.progress none: it explains a run far slower than expected
            if view.mode == "none":
                print(cpu_load.warning, file=sys.stderr)
            else:
                view.report(cpu_load.warning)
        if self.val_images and resume_from is None and dist.is_main:
            base = evaluate_images(
                None, self.val_images, cfg.model.scale, protocol=cfg.data.val.protocol
            )
            self.log.write("val", iter=0, model="bicubic", **base)
            view.report(
                f"bicubic on validation ({len(self.val_images)} images, {self.val_source}): "
                f"PSNR {base['psnr']:.2f} dB, SSIM {base['ssim']:.4f}"
            )

        handlers = self._install_signal_handlers()
        try:
            interrupted = self._loop(data_iter, view)
        except TrainingDivergedError as exc:
            self.log.write("diverged", iter=self.iteration, error=str(exc))
            raise
        finally:
            self._restore_signal_handlers(handlers)
            view.close()
            del data_iter

        weights: list[Path] = []
        if not interrupted and dist.is_main:
            if self.last_metrics is None and self.val_images and self._nonfinite_streak == 0:
                self.last_metrics = (
                    self.validate()
                )  # resumed at the end, before writing the weights
            weights = self.write_weights("final", self.last_metrics)
            self.log.write("end", iter=self.iteration, weights=weights, best=self.best)
        elif interrupted and dist.is_main:
            self.log.write("interrupted", iter=self.iteration, signal=self._stop_signal)
        ddp.barrier(dist)
        self.log.close()
        self.scalars.close()
        return TrainResult(
            self.run_dir, self.iteration, interrupted, weights, self.last_metrics, self.best
        )

    def _loop(self, data_iter: Iterator[tuple[Tensor, ...]], view: ConsoleView) -> bool:
        """Iterate to the end, or to a stop signal (True: interrupted, state saved)."""
        cfg = self.config
        total = cfg.train.iterations
        window = _Window()
        val_due = ckpt_due = False
        while self.iteration < total:
            t_wait = time.perf_counter()
            batch = next(data_iter)  # (LR, HR) or, from the teacher cache, (LR, HR, teacher)
            window.wait += time.perf_counter() - t_wait
            stats = self.train_step(*batch)
            self.iteration += 1
            window.add(stats)
            if stats["bad"]:
                self._on_bad_step(stats, view)
            view.step(self.iteration, stats["loss"], stats["lr"])
            self._fire("step")
            if self.iteration % cfg.logging.print_every == 0 or self.iteration == total:
                self._report(window, stats, view)
                window = _Window()
            if self.iteration == total:
                val_due = ckpt_due = True
            # while steps are being skipped the state is suspect: validation and checkpoints
            # wait for the next good step, so a NaN never replaces a good state on disk
            healthy = self._nonfinite_streak == 0
            val_due = val_due or self.iteration % cfg.logging.val_every == 0
            if val_due and healthy:
                self._validate(view)
                val_due = False
            ckpt_due = ckpt_due or self.iteration % cfg.logging.checkpoint_every == 0
            stop = ddp.any_rank(self._stop_signal is not None, self.dist)
            if (ckpt_due or stop) and healthy and self._last_saved != self.iteration:
                self.save_checkpoint()
                ckpt_due = False
            if stop:
                return True
        return False

    def _on_bad_step(self, stats: dict[str, Any], view: ConsoleView) -> None:
        self.log.write(
            "skip", iter=self.iteration, loss=stats["loss"], grad_norm=stats["grad_norm"]
        )
        view.report(
            f"iteration {self.iteration}: non-finite loss/gradients, step skipped "
            f"({self._nonfinite_streak} in a row)"
        )
        if self._nonfinite_streak >= self.config.train.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"loss or gradients were NaN/Inf for {self._nonfinite_streak} steps in a row "
                f"(iteration {self.iteration}, precision {self.config.train.precision}); try "
                "precision bf16 or fp32, a lower train.lr or train.grad_clip; the last good "
                f"state is in {self.ckpt_dir}"
            )

    def _report(self, window: _Window, stats: dict[str, Any], view: ConsoleView) -> None:
        elapsed = max(time.perf_counter() - window.t0, 1e-9)
        n = max(window.n, 1)
        it_s = n / elapsed
        batch = self.config.data.train.batch_size
        record = {
            "iter": self.iteration,
            "loss": window.loss / max(window.good, 1),
            "lr": stats["lr"],
            "grad_norm": stats["grad_norm"],
            "it_per_s": it_s,
            "samples_per_s": it_s * batch,
            "data_wait_frac": window.wait / elapsed,
            "epoch": self.iteration * batch / len(self.store),
            **{f"loss_{k}": v for k, v in stats["terms"].items()},
        }
        self.log.write("train", **record)
        self.scalars.add(
            self.iteration,
            {
                "train/loss": record["loss"],
                "train/lr": record["lr"],
                "train/grad_norm": record["grad_norm"],
                "train/it_per_s": it_s,
                "train/data_wait_frac": record["data_wait_frac"],
            },
        )
        if view.lines_mode():
            remaining = (self.config.train.iterations - self.iteration) / it_s
            view.report(
                f"iter {self.iteration}/{self.config.train.iterations}  loss {record['loss']:.4g}  "
                f"lr {stats['lr']:.2e}  {it_s:.2f} it/s  {record['samples_per_s']:.0f} samples/s  "
                f"data wait {100 * record['data_wait_frac']:.0f}%  "
                f"eta {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
            )

    def _validate(self, view: ConsoleView) -> None:
        if self.dist.is_main and self.val_images:
            metrics = self.validate()
            assert metrics is not None
            self.last_metrics = metrics
            improved = self.best is None or metrics["psnr"] > self.best["psnr"]
            if improved:
                self.best = {"iter": self.iteration, **metrics}
                self.write_weights("best", metrics)
            self.log.write("val", iter=self.iteration, best=improved, **metrics)
            self.scalars.add(
                self.iteration, {"val/psnr": metrics["psnr"], "val/ssim": metrics["ssim"]}
            )
            view.report(
                f"validation at {self.iteration}: PSNR {metrics['psnr']:.2f} dB, "
                f"SSIM {metrics['ssim']:.4f}" + ("  (best)" if improved else "")
            )
            self._fire("validation")
        ddp.barrier(self.dist)

    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train(
    config: TrainConfig, *, resume: bool | None = None, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Run a recipe to the end (or to a signal); see `Trainer`."""
    return Trainer(config, resume=resume, callbacks=callbacks).run()
