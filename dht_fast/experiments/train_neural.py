"""One training run of a neural learner, with or without a performative teacher: the loop behind
Table 1, on one process or under ``torchrun`` (torch.distributed, one rank per process).

A run is ``(policy, seed)``: ``torch.manual_seed(seed)`` fixes the initial model (the same for
every policy), the epoch order (``DistributedSampler(seed=seed)``, reshuffled per epoch), the
augmentation and the random policy (torch's global RNG, a stream per rank). At the end of every
epoch a checkpoint (model, optimizer, scheduler, every rank's RNG states, epoch, history) is written
atomically by rank 0; a run restarted from it continues exactly as the uninterrupted one.

Distributed: each rank trains on its shard of every global batch and teaches its own rows; the
teacher all-gathers the batch's features for the lookahead, so ``w*`` is the global batch's on
every rank (see :mod:`dht_fast.teachers.performative`); DDP averages the gradients, so a step
equals the one-process step on the global batch up to rounding (BatchNorm statistics excepted:
they are per rank unless ``sync_bn``).
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from dht_fast.data.vision import VisionData
from dht_fast.experiments.runner import atomic_write
from dht_fast.models import build_model
from dht_fast.teachers.performative import PerformativeTeacher

log = logging.getLogger(__name__)

REFERENCE_BATCH = 128  # the paper's batch: lr and milestones are given at this batch size


class ResumeError(ValueError):
    """A checkpoint cannot be continued in this setting; the message says why."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place: rank, world size, device, and whether it created the group."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), if any: NCCL on
    GPUs, gloo on the CPU. ``device``: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = world > 1 and not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return DistInfo(rank, world, dev, owns)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the data. ``batch_size`` is global (all ranks)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple  # iterations at REFERENCE_BATCH
    warmup_epochs: float
    scale_lr: bool
    eps: float
    steps: int
    lookahead: int
    step_size: Optional[float]
    backend: str
    amp: str  # "auto" (bf16 on GPU), "bf16" or "off"
    compile: bool = False
    sync_bn: bool = False
    progress: bool = True


class TaughtModel(nn.Module):
    """A model with ``features``/``head`` and an optional teacher between them.

    ``forward(x, y, lr)``: logits ``(B, C)`` of the head on the taught features when a teacher
    is set and ``y`` is given, on the plain features otherwise.
    """

    def __init__(self, model: nn.Module, teacher: Optional[PerformativeTeacher]):
        super().__init__()
        self.model = model
        self.teacher = teacher

    def forward(self, x, y=None, lr: Optional[float] = None):
        feats = self.model.features(x)
        if self.teacher is not None and y is not None:
            feats = self.teacher(feats, y, lr=lr)
        return self.model.head(feats)


class LrSchedule:
    """The factor on the base lr at iteration ``it``: linear warmup over ``warmup`` iterations,
    then ``gamma`` at each milestone. A picklable callable for ``LambdaLR``."""

    def __init__(self, warmup: int, milestones, gamma: float = 0.1):
        self.warmup, self.milestones, self.gamma = warmup, tuple(milestones), gamma

    def __call__(self, it: int) -> float:
        ramp = min(1.0, (it + 1) / self.warmup) if self.warmup > 0 else 1.0
        return ramp * self.gamma ** sum(it >= m for m in self.milestones)


def effective_lr(cfg: TrainConfig) -> float:
    """The linear scaling rule: ``lr * batch / 128`` for global batches above the paper's."""
    if cfg.scale_lr and cfg.batch_size > REFERENCE_BATCH:
        return cfg.lr * cfg.batch_size / REFERENCE_BATCH
    return cfg.lr


def _autocast(cfg: TrainConfig, device: torch.device):
    on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def _rng_state(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@torch.no_grad()
def evaluate(model: nn.Module, data, info: DistInfo, cfg: TrainConfig, batch: int = 1000):
    """Test accuracy in ``[0, 1]``; each rank counts rows ``rank::world``, summed over ranks."""
    was_training = model.training
    model.eval()
    idx = torch.arange(info.rank, len(data), info.world)
    correct = torch.zeros((), dtype=torch.int64, device=info.device)
    for chunk in idx.split(batch):
        x, y = data.batch(chunk)
        x, y = x.to(info.device), y.to(info.device)
        with _autocast(cfg, info.device):
            correct += (model(x).argmax(1) == y).sum()
    if info.active:
        dist.all_reduce(correct)
    model.train(was_training)
    return correct.item() / len(data)


def train_run(cfg: TrainConfig, data: VisionData, policy: str, seed: int, info: DistInfo,
              ckpt_path: Path, on_epoch_end: Optional[Callable] = None) -> dict:
    """Train one ``(policy, seed)`` run to ``cfg.epochs``, resuming from ``ckpt_path`` if it
    exists. Returns ``{"final_accuracy", "iterations", "wall_seconds", "history"}``."""
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world} ranks")
    local_batch = cfg.batch_size // info.world
    torch.manual_seed(seed)
    model = build_model(cfg.arch, in_shape=data.in_shape, num_classes=data.num_classes)
    if cfg.sync_bn and info.active:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    # Same initial model on every rank, then a stream of its own per rank for the augmentation
    # and the random policy (rank 0's stream is the one-process run's).
    torch.manual_seed(seed + 1_000_003 * info.rank)
    teacher = None if policy == "sgd" else PerformativeTeacher(
        model.head, eps=cfg.eps, steps=cfg.steps, lookahead=cfg.lookahead,
        step_size=cfg.step_size, policy=policy, backend=cfg.backend)
    net: nn.Module = TaughtModel(model, teacher)
    if info.active:
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    base_lr = effective_lr(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    per_epoch = -(-len(data.train) // cfg.batch_size)
    scale = REFERENCE_BATCH / cfg.batch_size
    schedule = LrSchedule(round(cfg.warmup_epochs * per_epoch),
                          [round(m * scale) for m in cfg.milestones])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    state = {"epoch": 0, "iterations": 0, "wall_seconds": 0.0, "history": []}
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=info.device, weights_only=False)
        if len(ckpt["rng"]) != info.world:
            raise ResumeError(f"{ckpt_path} was written by {len(ckpt['rng'])} ranks; resume it "
                              f"with as many, not {info.world}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"][info.rank], info.device)
        state = ckpt["state"]
        log.info("%s seed %d: resumed from %s after epoch %d", policy, seed, ckpt_path,
                 state["epoch"])
    sampler = DistributedSampler(data.train, num_replicas=info.world, rank=info.rank,
                                 shuffle=True, seed=seed)
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        batches = torch.tensor(list(sampler), dtype=torch.int64).split(local_batch)
        loss_sum = torch.zeros((), device=info.device)
        net.train()
        bar = tqdm(batches, desc=f"{policy} seed {seed} epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=None if cfg.progress and info.main else True)
        for chunk in bar:
            x, y = data.train.batch(chunk)
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            with _autocast(cfg, info.device):
                logits = net(x, y, opt.param_groups[0]["lr"])
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        if info.active:
            dist.all_reduce(loss_sum)
        accuracy = evaluate(model, data.test, info, cfg)
        state["epoch"] = epoch + 1
        state["iterations"] += len(batches)
        state["wall_seconds"] += time.perf_counter() - start
        state["history"].append({
            "epoch": epoch + 1, "test_accuracy": accuracy,
            "train_loss": loss_sum.item() / (len(batches) * info.world),
            "lr": opt.param_groups[0]["lr"]})
        log.info("%s seed %d epoch %d: loss %.4f, test accuracy %.4f, lr %.4g, %.1f s", policy,
                 seed, epoch + 1, state["history"][-1]["train_loss"], accuracy,
                 opt.param_groups[0]["lr"], time.perf_counter() - start)
        rngs = [None] * info.world
        if info.active:
            dist.all_gather_object(rngs, _rng_state(info.device))
        else:
            rngs = [_rng_state(info.device)]
        if info.main:
            ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "rng": rngs, "state": state}
            atomic_write(ckpt_path, lambda fh: torch.save(ckpt, fh), binary=True)
        if on_epoch_end is not None:
            on_epoch_end(policy, seed, epoch + 1)
    final = state["history"][-1]["test_accuracy"] if state["history"] else float("nan")
    return {"final_accuracy": final, "iterations": state["iterations"],
            "wall_seconds": state["wall_seconds"], "history": state["history"]}
