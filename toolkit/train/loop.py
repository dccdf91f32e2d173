"""The training loop: forward, loss, backward, clip, step, log, checkpoint — in that order.

Read ``fit`` top to bottom. The ``_setup_*`` helpers build what it needs; ``checkpoint.py`` saves and
restores everything needed to resume bit-identically (CPU, fp32, ``deterministic = true``).

Under torchrun (``distributed.py``) the same loop runs on every rank: each takes its shard of the global
batch, gradients are all-reduced on the last micro-step only, rank 0 alone logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.config import Recipe, TrainConfig
from toolkit.errors import Interrupted, ToolkitError, UserError
from toolkit.events import StageEmitter, null_emitter
from toolkit.rundir import RunDir
from toolkit.tasks.base import Prepared, Task
from toolkit.train import checkpoint as ckpt_io
from toolkit.train import distributed, perf
from toolkit.train.bookkeeping import MetricsLog, NoLog, peak_memory_mb, stop_on_signals
from toolkit.train.distributed import DistEnv
from toolkit.train.mfu import MfuMeter, mfu

PROGRESS_INTERVAL_S = 0.1
"""the least time between two progress events (log steps and the last step always get one)"""


class TrainingDiverged(ToolkitError):
    """Too many non-finite losses or gradients in a row."""

    exit_code = 1


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint."""

    step: int = 0                # optimizer steps done
    epoch: int = 0               # epochs started (0-based index of the current one)
    batch_in_epoch: int = 0      # batches of the current epoch already consumed
    skipped_steps: int = 0       # steps skipped for a non-finite loss/gradient (and fp16 scaler overflows)
    bad_in_row: int = 0
    best: float | None = None    # best validation value of the primary metric
    evals_since_best: int = 0
    stopped: str = ""            # "" while running; finished | early_stopping


@dataclass
class TrainResult:
    final_dir: Path
    state: LoopState
    validation: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = 0.0


# ---- setup ------------------------------------------------------------------------------------------

def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _setup_device(cfg: TrainConfig, env: DistEnv = distributed.SINGLE) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if kind == "cuda" and env.active:
        return torch.device("cuda", env.local_rank)  # one GPU per rank
    return torch.device(kind)


def _setup_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation weights (the usual AdamW practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is the fastest AdamW on CPU and CUDA alike (HF Trainer's default, adamw_torch_fused).
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda"))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up, then cosine / linear decay to 0, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, max(0.0, progress))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _setup_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    per_epoch = math.ceil(n_train / cfg.batch_size)
    return cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The data order of one epoch: a permutation drawn from its own generator, so it depends only on
    (seed, epoch) and a resumed run replays it without touching the global RNG."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ---- the loop -----------------------------------------------------------------------------------------

def fit(recipe: Recipe, task: Task, prepared: Prepared, run: RunDir, emit: StageEmitter,
        resume: bool = False, defer: bool | None = None, dist: DistEnv | None = None,
        meta: dict[str, Any] | None = None, prefetch: bool | None = None) -> TrainResult:
    """Train ``prepared.model`` per ``recipe.train`` with checkpoints in ``run.checkpoints``.

    ``defer`` (default: on CUDA) books each step one step late so the host never waits for the device.
    ``prefetch`` (default: on CUDA unless ``deterministic``) collates the coming micro-batches on a thread.
    ``dist`` (default: the process group this process joined, see ``distributed.init``): under DDP every
    rank calls ``fit``; rank 0 alone writes. ``meta``: plain data kept in every checkpoint (e.g. a LoRA
    base model's reference); resuming from a checkpoint with another ``meta["base"]`` is refused.
    """
    cfg = recipe.train
    env = dist if dist is not None else distributed.current()
    if not env.is_main:
        emit = null_emitter("train")  # rank 0 speaks for the job
    device = _setup_device(cfg, env)
    model = prepared.model.to(device)
    n_train = len(prepared.train_set)
    if n_train == 0:
        raise UserError("the training split is empty; check data.train and data.limit")
    distributed.check_batch(cfg.batch_size, cfg.grad_accum, env.world, recipe.source_path or "the recipe")
    total = total_steps(cfg, n_train)
    optimizer = _setup_optimizer(model, cfg, device)
    scheduler = _setup_scheduler(optimizer, cfg, total)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    state = LoopState()

    resumed_from = -1
    if env.is_main:
        ckpt_io.clean_partial(run.checkpoints)
    if resume:
        found = None
        if env.is_main:
            found = ckpt_io.newest_valid(run.checkpoints, warn=lambda m: emit.log(m, "warning"))
        found = distributed.broadcast_object(env, found)  # every rank resumes from rank 0's choice
        if found is None:
            raise UserError(f"{run.checkpoints}: no valid checkpoint to resume from; rerun with --force to start over")
        extra = ckpt_io.load_checkpoint(found, model, optimizer)
        rng = ckpt_io.rng_of_rank(extra, env.rank, env.world, found.path)
        if meta and meta.get("base") != extra.get("meta", {}).get("base", meta.get("base")):
            raise UserError(f"{found.path}: made from another base model ({extra['meta']['base']}); restore that "
                            f"model or use --force to start over")
        scheduler.load_state_dict(extra["scheduler"])
        scaler.load_state_dict(extra["scaler"])
        state = LoopState(**extra["loop"])
        ckpt_io.restore_rng(rng)
        resumed_from = state.step
        emit.log(f"resumed from {found.path.name} (step {state.step}, epoch {state.epoch})")
    where = recipe.source_path or "the recipe"
    if cfg.compile:
        perf.compile_model(model, where)  # in place: checkpoints keep the eager model's keys
    net = distributed.wrap(model, env, device)  # DDP: all-reduces gradients in backward
    trainable = [q for q in model.parameters() if q.requires_grad]

    def save() -> Path:
        """Every rank calls this (its RNG state goes into the checkpoint); rank 0 writes."""
        rngs = distributed.gather_objects(env, ckpt_io.capture_rng())
        path = ckpt_io.step_dir(run.checkpoints, state.step)
        if env.is_main:
            extra = {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "loop": asdict(state)}
            if meta:
                extra["meta"] = meta
            path = ckpt_io.save_checkpoint(run.checkpoints, state.step, model, optimizer, extra,
                                           cfg.keep_checkpoints, rngs)
            emit("artifact", path=str(path), what="checkpoint", step=state.step)
        distributed.barrier(env)  # nobody moves on (or exits) before the checkpoint is in place
        return path

    def validate() -> dict[str, float]:
        """Rank 0 validates; the others adopt its metrics and early-stopping state, so all stop together."""
        metrics: dict[str, float] = {}
        if env.is_main:
            metrics = _validate(task, prepared, model, cfg, device, state, emit, log)
        if env.active:
            metrics, state.best, state.evals_since_best, state.stopped = distributed.broadcast_object(
                env, (metrics, state.best, state.evals_since_best, state.stopped))
        return metrics

    log = MetricsLog(run.metrics, resumed_from) if env.is_main else NoLog()
    batch_size, accum = cfg.batch_size, cfg.grad_accum
    anomaly = torch.autograd.detect_anomaly() if cfg.detect_anomaly else contextlib.nullcontext()
    # On CUDA a step's bookkeeping (was it finite? advance the LR, log) is read one step late, so the host
    # never waits for the GPU mid-run; a non-finite step is skipped on the device by the fused AdamW kernel
    # (found_inf), exactly as the fp16 GradScaler does. Steps that checkpoint, log or validate settle at once.
    defer = device.type == "cuda" if defer is None else defer
    meter = {"samples": 0, "tokens": 0, "t0": time.perf_counter(), "total_samples": 0, "total_time": 0.0,
             "progress_t": 0.0, "flops": 0.0}
    # MFU on CUDA devices of known peak, for models whose shapes the architecture adapters read (else off)
    flops = MfuMeter(model, device, cfg.precision, token_head=not getattr(task, "classifies", True))
    # A background collator helps where the device runs apart from the host (CUDA); on the CPU it would only
    # compete for the same cores, and a deterministic run keeps collation in the loop's thread and order.
    threaded = (device.type == "cuda" and not cfg.deterministic) if prefetch is None else prefetch

    def collate(part: list[int]) -> dict[str, Any]:
        batch = prepared.collate([prepared.train_set[i] for i in part])
        return perf.pinned(batch) if device.type == "cuda" else batch
    pending: dict[str, Any] | None = None
    validation: dict[str, float] = {}
    emit("start", total=total, resumed_from=max(resumed_from, 0), world_size=env.world)

    def settle() -> None:
        """Book the newest launched step: skip-count it or advance the schedule; log; report progress."""
        nonlocal pending
        p, pending = pending, None
        if p["event"] is not None:
            p["event"].synchronize()
        loss_v, norm_v = (float(x) for x in p["stats"])
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            # Skipped on the device (weights and optimizer state untouched); the LR does not advance.
            state.skipped_steps += 1
            if cfg.precision == "fp16" and math.isfinite(loss_v):
                return  # an fp16 overflow: the scaler lowers its scale; not a sign of divergence
            state.bad_in_row += 1
            emit.log(f"step {state.step + 1}: non-finite loss or gradient; step skipped "
                     f"({state.bad_in_row} in a row)", "warning")
            if state.bad_in_row >= cfg.max_bad_steps:
                last = ckpt_io.list_checkpoints(run.checkpoints)
                raise TrainingDiverged(
                    f"training diverged: {state.bad_in_row} non-finite steps in a row at step {state.step + 1}; "
                    f"lower train.lr, set train.clip, or use precision = 'fp32' "
                    f"(last good checkpoint: {last[-1].path.name if last else 'none yet'})")
            return
        state.bad_in_row = 0
        scheduler.step()
        state.step += 1
        meter["samples"] += p["samples"]
        meter["tokens"] += p["tokens"]
        meter["total_samples"] += p["samples"]
        meter["total_time"] += time.perf_counter() - p["t"]
        meter["flops"] += p["flops"]
        if p["before"] is not None:
            with torch.no_grad():
                # one host sync for the whole model (a float() per tensor costs a GPU sync each)
                diffs = torch._foreach_sub([q.float() for q in trainable], [b.float() for b in p["before"]])
                num = torch.stack(torch._foreach_norm(diffs)).double().pow(2).sum()
                den = torch.stack(torch._foreach_norm([b.float() for b in p["before"]])).double().pow(2).sum()
                num, den = torch.stack([num, den]).tolist()
            span = time.perf_counter() - meter["t0"]
            record = {
                "step": state.step, "epoch": state.epoch + p["epoch_fraction"], "loss": loss_v,
                "lr": p["lr"], "grad_norm": norm_v, "update_ratio": math.sqrt(num) / max(math.sqrt(den), 1e-12),
                "samples_per_s": meter["samples"] / span, "tokens_per_s": meter["tokens"] / span,
                "peak_memory_mb": peak_memory_mb(device), "skipped_steps": state.skipped_steps,
            }
            if flops.active:
                record["mfu"] = mfu(meter["flops"], span, flops.peak)
            log.write(record)
            with spans.span("events"):
                emit("metric", values=record)
            meter.update(samples=0, tokens=0, t0=time.perf_counter(), flops=0.0)
        now = time.perf_counter()
        if now - meter["progress_t"] >= PROGRESS_INTERVAL_S or state.step == total or p["before"] is not None:
            # at most ~10 progress events a second: fast GPU steps would otherwise spend their time on the
            # event file and the display
            meter["progress_t"] = now
            with spans.span("events"):
                emit("progress", step=state.step, total=total)

    def plan(indices: list[int]) -> list[list[int]]:
        """This rank's micro-batches of a global batch (index lists)."""
        mine = distributed.shard(indices, env)
        # Split this rank's share into `accum` micro-batches; each loss is weighted by its share of the global
        # batch, so the summed (and, under DDP, rank-averaged × world) gradient is the gradient of the global
        # batch's mean loss, whatever the world size. A short last batch that left this rank nothing gets a
        # zero-weighted pass of one example, which keeps it in the gradient all-reduce.
        return [mine[i::accum] for i in range(accum) if mine[i::accum]] or [[indices[0]]]

    loader: Any = perf.Inline(collate)
    try:
        with stop_on_signals() as stop, anomaly, perf.profiling(cfg.profile and env.is_main, run.train,
                                                              device) as spans:
            while state.step + (pending is not None) < total and not state.stopped:
                order = epoch_order(recipe.seed, state.epoch, n_train)
                batches = [order[i:i + batch_size] for i in range(0, n_train, batch_size)]
                plans = [plan(b) for b in batches]
                if threaded:
                    loader = perf.Prefetcher(collate, [p for b in plans[state.batch_in_epoch:] for p in b])
                while state.batch_in_epoch < len(batches) and state.step + (pending is not None) < total:
                    t_step = time.perf_counter()
                    indices = batches[state.batch_in_epoch]  # the global batch: the same on every rank
                    mine = distributed.shard(indices, env)
                    micro = plans[state.batch_in_epoch]
                    model.train()
                    loss_sum = torch.zeros((), device=device)
                    tokens, step_flops = 0, 0.0
                    for k, part in enumerate(micro):
                        share = len(part) / len(indices) if mine else 0.0
                        with spans.span("collate"):  # with the prefetcher: the wait for its next batch
                            batch = loader.get(part)
                        if "attention_mask" in batch and mine:
                            tokens += int(batch["attention_mask"].sum())  # counted on the host: no sync
                        if flops.active:
                            step_flops += flops.step_flops(batch)
                        with spans.span("to_device"):
                            batch = perf.to_device(batch, device)
                        # Gradients are all-reduced on the last micro-step only (DDP no_sync before it).
                        last = k == len(micro) - 1
                        with (net.no_sync() if env.active and not last else contextlib.nullcontext()):
                            with spans.span("forward"):
                                with autocast(device, cfg.precision):
                                    out = net(**batch)
                                loss = out.loss.float() * share
                            with spans.span("backward"):
                                scaler.scale(loss * env.world if env.active else loss).backward()
                        loss_sum += loss.detach()
                    state.batch_in_epoch += 1
                    stop_now, tokens = distributed.agree(env, bool(stop["signal"]), tokens)
                    distributed.all_reduce_sum(env, loss_sum)  # the global batch's mean loss

                    with spans.span("optimizer"):
                        scaler.unscale_(optimizer)
                        grad_norm = torch.nn.utils.clip_grad_norm_(
                            model.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
                        stats = torch.stack([loss_sum, grad_norm.detach().float().to(device)])  # (2,) on device
                    if pending is not None:
                        with spans.span("bookkeeping"):
                            settle()  # the previous step: sets this step's LR before its optimizer step

                    # Decide now whether this step needs the host afterwards (log, checkpoint, validate, stop).
                    upcoming = state.step + 1
                    sync_now = (not defer or upcoming % cfg.log_every == 0 or upcoming == total or stop_now
                                or (cfg.eval_every and upcoming % cfg.eval_every == 0)
                                or (cfg.checkpoint_every and upcoming % cfg.checkpoint_every == 0)
                                or state.batch_in_epoch == len(batches))
                    log_now = upcoming % cfg.log_every == 0 or upcoming == total
                    before = [q.detach().clone() for q in trainable] if log_now and env.is_main else None
                    lr_now = scheduler.get_last_lr()[0]
                    with spans.span("optimizer"):
                        if scaler.is_enabled():
                            scaler.step(optimizer)  # fused AdamW: skipped on the device when found_inf
                            scaler.update()
                        else:
                            optimizer.found_inf = (~torch.isfinite(stats).all()).float()
                            optimizer.grad_scale = None
                            optimizer.step()
                            del optimizer.found_inf, optimizer.grad_scale
                        optimizer.zero_grad(set_to_none=True)

                    event = None
                    if device.type == "cuda":
                        host = torch.empty(2, pin_memory=True)
                        host.copy_(stats, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                        stats = host
                    pending = {"stats": stats, "event": event, "samples": len(indices), "tokens": tokens,
                               "t": t_step, "before": before, "lr": lr_now, "flops": step_flops,
                               "epoch_fraction": state.batch_in_epoch / len(batches)}
                    spans.step_done(time.perf_counter() - t_step)
                    if not sync_now:
                        continue
                    step_before = state.step
                    with spans.span("bookkeeping"):
                        settle()
                    if state.step == step_before:
                        continue  # skipped: no boundary reached
                    if cfg.eval_every and state.step % cfg.eval_every == 0:
                        validation = validate()
                    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < total:
                        save()
                    if stop_now:
                        signame = stop["signal"] or "a signal to another process"
                        path = save()
                        emit("interrupted", signal=signame, step=state.step, checkpoint=str(path))
                        raise Interrupted(f"stopped by {signame} at step {state.step}; checkpoint "
                                          f"{path.name} saved; rerun with --resume to continue")
                loader.close()
                if pending is not None:
                    settle()
                if state.batch_in_epoch >= len(batches):
                    if not cfg.eval_every:
                        validation = validate()
                    state.epoch += 1
                    state.batch_in_epoch = 0
            if pending is not None:
                settle()
            state.stopped = state.stopped or "finished"
            if state.batch_in_epoch != 0 and not (cfg.eval_every and state.step % cfg.eval_every == 0):
                # Training ended inside an epoch: validate the final weights too.
                validation = validate()
            save()
    except Exception as exc:
        error = perf.compile_error(exc, where) if cfg.compile else None
        if error is None:
            raise
        raise error from None
    finally:
        loader.close()
        log.close()
    speed = meter["total_samples"] / meter["total_time"] if meter["total_time"] else 0.0
    return TrainResult(run.final, state, validation, speed)


def _validate(task: Task, prepared: Prepared, model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
              state: LoopState, emit: StageEmitter, log: MetricsLog) -> dict[str, float]:
    """Validation metrics; early stopping bookkeeping (no RNG is used, so resume stays exact)."""
    if not len(prepared.val_set):
        return {}
    metrics = task.evaluate(model, prepared, prepared.val_set, cfg.batch_size, device)
    record = {"step": state.step, **{f"val_{k}": v for k, v in metrics.items()}}
    log.write(record)
    emit("metric", values=record)
    value = metrics.get(prepared.primary_metric)
    if value is not None:
        better = state.best is None or (value > state.best if prepared.higher_is_better else value < state.best)
        if better:
            state.best, state.evals_since_best = value, 0
        else:
            state.evals_since_best += 1
            if cfg.early_stopping and state.evals_since_best >= cfg.early_stopping:
                state.stopped = "early_stopping"
                emit.log(f"early stopping: validation {prepared.primary_metric} has not improved for "
                         f"{state.evals_since_best} evaluations")
    return metrics
