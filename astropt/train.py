"""Train one AstroPT model size: single process (CPU or one GPU), or DDP or FSDP under torchrun.

Follows AstroPT v1's ``train.py`` (itself nanoGPT's): AdamW (betas 0.9/0.95, weight decay
on 2-D weights only), linear warm-up then cosine decay to LR/10, gradient clipping,
gradient accumulation, bf16 autocast on GPU, optional ``torch.compile``. The model sees
spiral-ordered patches: X = tokens[:-1], Y = tokens[1:], Huber loss.

Data: the token arrays written by the ``tokenise`` rule are memory-mapped, a batch of raw
patches is gathered into a (pinned) buffer, copied to the device and normalised there
(``astropt.loader``). The order of galaxies is a
fixed function of (seed, epoch), so step ``s`` always sees the same galaxies: resuming
needs only the step count, and each rank takes a disjoint slice of every step.

Several ranks (``train.parallel``): ``ddp`` keeps the whole model, its gradients and the
optimiser's state on every rank; ``fsdp`` shards them (FSDP2 ``fully_shard``, one unit per
block, :func:`build_model`), for sizes one GPU cannot hold. Under FSDP ``last.pt`` and
``ckpt.pt`` hold the whole state gathered on rank 0 (:func:`full_state`): ``ckpt.pt`` has the
AstroPT v1 layout either way.

Files in ``out_dir``:
    last.pt      resumable state (model, optimiser, step, metrics so far, RNG), written
                 atomically every ``checkpoint_interval`` steps; a rerun resumes from it.
    ckpt.pt      the final model (v1 checkpoint layout, no optimiser), written at the end.
    ckpt.json    a readable sidecar (:class:`astropt.record.RunRecord`): size, parameters,
                 steps, final losses, config, and the run's provenance (training seed, data
                 seed, threads, torch version, CPU capability or GPU: :func:`provenance`).
    metrics.csv  step, tokens_seen, flops, train_loss, val_loss, lr, elapsed_s, tokens_per_s,
                 mfu, peak_mem_gb, gpu_hours.
    history.log  the progress lines of every attempt, appended (the CLI writes it).

Faults: SIGUSR1 or SIGTERM (SLURM's warning before a time limit or on preemption, e.g.
``sbatch --signal=USR1@600``) makes every rank stop at the next step boundary; rank 0 writes
``last.pt`` and the process exits with status 75 (:data:`EXIT_CHECKPOINTED`), so the job
fails and is retried, and the retry resumes where it stopped: model, optimiser, schedule
position, data position and random state. A job killed outright (SIGKILL) loses at most the
steps since the last ``checkpoint_interval``: checkpoints are written atomically, so
``last.pt`` is always the last complete one. A non-finite loss stops the run with its step
number and keeps the last good ``last.pt``.

The code reads like nanoGPT's loop: :func:`train` runs the phases, each a function of the
run's fixed parts (:class:`Run`) and the loop's state (:class:`LoopState`): :func:`setup`,
:func:`resume`, :func:`start`, then per step :func:`train_step`, :func:`log_step` (with
:func:`evaluate`), :func:`save_last` and :func:`stop_at_boundary`, and :func:`finish`.

Run (a split is given by its manifest, ``index.parquet``, or its folder)::

    python -m astropt.train --spec spec.json --train-tokens results/tokens/train/index.parquet \\
        --val-tokens results/tokens/validation/index.parquet --out-dir results/models/416K --threads 2
    torchrun --standalone --nproc_per_node=8 -m astropt.train ...   # DDP, one rank per GPU
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from astropt.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from astropt.config import LATER_TRAIN_KEYS, SizeSpec, TrainConfig, spec_from_json
from astropt.hardware import peak_flops, peak_memory_gb
from astropt.io import atomic_write, duration
from astropt.loader import BatchGatherer
from astropt.model import GPT
from astropt.patches import normalise
from astropt.record import RunRecord
from astropt.shards import TokenSplit, load_tokens

METRIC_COLUMNS = [
    "step",
    "tokens_seen",
    "flops",
    "train_loss",
    "val_loss",
    "lr",
    "elapsed_s",
    "tokens_per_s",
    "mfu",
    "peak_mem_gb",
    "gpu_hours",
]
# Settings that do not change what is learned: a resumed run may differ in these.
OPERATIONAL_KEYS = {"eval_interval", "log_interval", "checkpoint_interval", "device", "compile", "threads",
                    "peak_tflops", "data_seed"}
EXIT_CHECKPOINTED = 75
"""Exit status after a stop signal was handled by checkpointing (EX_TEMPFAIL: retry me)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Checkpointed(Exception):
    """Training stopped at a step boundary after a stop signal; ``last.pt`` holds the state."""

    def __init__(self, step: int, signame: str) -> None:
        super().__init__(f"stopped by {signame} at step {step}; resumable state in last.pt")


class StopRequest:
    """Remembers SIGUSR1 / SIGTERM instead of dying, so training can checkpoint first.

    Installed for the duration of a ``with`` block (the previous handlers are put back).
    """

    SIGNALS = ("SIGUSR1", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers only there
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- helpers


def lr_at(step: int, peak_lr: float, cfg: TrainConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, cosine to min."""
    min_lr = peak_lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak_lr * (step + 1) / (cfg.warmup_steps + 1)
    end = cfg.last_decay_step
    if step >= end:
        return min_lr
    ratio = (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak_lr - min_lr)


def sample_indices(position: int, count: int, n: int, seed: int) -> np.ndarray:
    """Galaxy indices for sample positions ``position .. position+count-1`` of the stream.

    The stream is epoch after epoch of a seeded permutation of ``range(n)``.
    """
    pos = np.arange(position, position + count)
    epochs, offsets = pos // n, pos % n
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = _permutation(n, seed, int(epoch))
        sel = epochs == epoch
        out[sel] = perm[offsets[sel]]
    return out


@functools.lru_cache(maxsize=1)  # one epoch at a time is enough
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def data_identity(split) -> str:
    """Hash of a token split: its galaxy ids in row order, array shape and dtype."""
    h = hashlib.sha256(f"{split.tokens.shape} {split.tokens.dtype}".encode())
    for chunk in range(0, len(split.ids), 100_000):
        h.update("\n".join(map(str, split.ids[chunk : chunk + 100_000])).encode())
    return h.hexdigest()[:16]


def run_fingerprint(spec: SizeSpec, cfg: TrainConfig, data: str = "", sharded: bool = False) -> str:
    """Hash of everything that decides what is learned: model, settings (not logging, device,
    parallel mode or activation checkpointing) and the data (:func:`data_identity` of the
    splits); and, ``sharded``, that ``last.pt`` holds FSDP's layout (optimiser state by name)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL_KEYS and k not in LATER_TRAIN_KEYS}
    payload = {"model": spec.model.to_dict(), "lr": spec.lr, "train": d, "data": data}
    if sharded:
        payload["layout"] = "fsdp"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def provenance(cfg: TrainConfig, device: torch.device, bf16: bool) -> dict:
    """Where a run's numbers come from: its seeds, threads, software and machine.

    CPU training is bit-for-bit reproducible only on the same machine (CPU kernel set), thread
    count and versions: changing only the threads (1 -> 2) or the kernels (AVX-512 -> AVX2)
    changes the losses. These fields say which.
    """
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "threads": cfg.threads,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "host": platform.node(),
        "dtype": "bfloat16 autocast" if bf16 else "float32",
    }


@dataclass
class Dist:
    """The process's place in a (possibly one-process) DDP group."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible to this job")
    if world == 1:
        return Dist(), torch.device("cuda" if use_cuda else "cpu")
    dist = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(dist.local_rank)
        return dist, torch.device("cuda", dist.local_rank)
    return dist, torch.device("cpu")


# --------------------------------------------------------------------------- the run's state


@dataclass
class Run:
    """What a training run holds fixed once :func:`setup` has built it: settings, data, model,
    optimiser and its place in the DDP group (``net``, ``gather``, ``stop_group``: :func:`start`)."""

    spec: SizeSpec
    cfg: TrainConfig
    out_dir: Path
    dist: Dist
    device: torch.device
    say: Callable[..., Any]
    stop: StopRequest
    train_split: TokenSplit
    val_split: TokenSplit
    model: GPT  # the model itself: evaluated and saved
    optimizer: torch.optim.Optimizer
    n_params: int
    flops_per_token: int
    fingerprint: str  # run_fingerprint: a last.pt with another one belongs to another run
    peak: float | None  # peak FLOP/s of one device; None: no MFU (CPU, unknown GPU)
    use_bf16: bool
    autocast: Any  # bf16 autocast, or a null context
    sharded: bool = False  # FSDP: the model, its gradients and optimiser state sharded over the ranks
    net: torch.nn.Module | None = None  # what a step runs: the model, compiled and / or in DDP
    gather: BatchGatherer | None = None
    stop_group: Any = None  # under DDP: the ranks' CPU (gloo) group that agrees on stopping

    @property
    def accum(self) -> int:
        """Micro-batches per rank per step."""
        return self.cfg.grad_accum // self.dist.world

    @property
    def global_batch(self) -> int:
        """Galaxies per optimiser step, all ranks together."""
        return self.cfg.micro_batch * self.cfg.grad_accum

    @property
    def seq(self) -> int:
        """Positions trained per galaxy."""
        return self.spec.model.block_size - 1

    @property
    def last(self) -> Path:
        """The resumable state."""
        return self.out_dir / "last.pt"


@dataclass
class LoopState:
    """What changes from step to step; ``last.pt`` keeps it (with the model and optimiser).

    The window is the steps since the last metrics row: their summed mean losses (a tensor on
    the device, read once per row), their count, and the clock and step where it began.
    """

    step: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)
    best_val: float = float("inf")
    elapsed_before: float = 0.0  # training seconds of earlier attempts
    elapsed: float = 0.0  # training seconds up to the last metrics row or checkpoint
    t_start: float = 0.0  # perf_counter() when this attempt's loop began
    window_loss: torch.Tensor | None = None
    window_steps: int = 0
    window_t0: float = 0.0
    window_step0: int = 0


# --------------------------------------------------------------------------- training


def train(
    spec: SizeSpec,
    cfg: TrainConfig,
    train_tokens: Path,
    val_tokens: Path,
    out_dir: Path,
    log=print,
) -> pd.DataFrame:
    """Train one size and write ``ckpt.pt``, ``ckpt.json`` and ``metrics.csv`` in ``out_dir``.

    ``train_tokens`` / ``val_tokens`` are tokenised splits: a split's folder or its manifest
    ``index.parquet``. Resumes from ``out_dir/last.pt`` when it holds the same run (same
    fingerprint); a ``last.pt`` from a different configuration is kept as ``last.pt.old`` and
    training starts afresh.

    Returns:
        The metrics table (also written to ``metrics.csv``).

    Raises:
        Checkpointed: After SIGUSR1 / SIGTERM: ``last.pt`` was written at a step boundary
            (the CLI exits with :data:`EXIT_CHECKPOINTED`).
        NonFiniteLossError: If the training loss is NaN or infinite (``last.pt`` is kept).
    """
    dist, device = _setup_distributed(cfg.device)
    try:
        with StopRequest() as stop:
            run = setup(spec, cfg, Path(train_tokens), Path(val_tokens), Path(out_dir),
                        dist, device, log if dist.main else _quiet, stop)
            state = resume(run)
            start(run, state)
            while state.step < cfg.steps:
                lr = train_step(run, state)
                last_step = state.step == cfg.steps
                do_eval = state.step % cfg.eval_interval == 0 or last_step
                do_ckpt = state.step % cfg.checkpoint_interval == 0 or last_step
                # Check the loss before every checkpoint so a saved state is never non-finite.
                if state.step % cfg.log_interval == 0 or do_eval or do_ckpt:
                    log_step(run, state, lr, do_eval)
                if do_ckpt:
                    save_last(run, state)
                if not last_step and _stop_agreed(run):
                    stop_at_boundary(run, state, saved=do_ckpt)  # raises Checkpointed
            return finish(run, state)
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _quiet(*_args, **_kwargs) -> None:
    """The log of ranks other than 0."""


# --------------------------------------------------------------------------- phases


def setup(spec: SizeSpec, cfg: TrainConfig, train_tokens: Path, val_tokens: Path, out_dir: Path,
          dist: Dist, device: torch.device, say: Callable[..., Any], stop: StopRequest) -> Run:
    """Setup: open the token splits, check them against the size, seed, build the model and
    its optimiser, and fingerprint the run."""
    torch.set_num_threads(max(1, cfg.threads))
    train_split, val_split = load_tokens(train_tokens), load_tokens(val_tokens)
    n_tok, dim = train_split.tokens.shape[1:]
    if (n_tok, dim) != (spec.model.block_size, spec.model.input_dim):
        raise ValueError(
            f"tokens in {train_tokens} are {n_tok} x {dim} per galaxy but size {spec.name} expects "
            f"{spec.model.block_size} x {spec.model.input_dim} (patch_size {spec.model.patch_size}, "
            f"{spec.model.n_chan} bands): re-run the tokenise rule with this config"
        )
    if cfg.grad_accum % dist.world:
        raise ValueError(
            f"train.grad_accum ({cfg.grad_accum}) must be divisible by the number of ranks ({dist.world})"
        )
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
    sharded = cfg.parallel == "fsdp" and dist.world > 1
    torch.manual_seed(cfg.seed)
    model = build_model(spec, dist, device, sharded)
    model.activation_checkpointing = cfg.activation_checkpointing
    optimizer = model.configure_optimizer(cfg.weight_decay, spec.lr, cfg.betas, device.type)
    return Run(
        spec=spec, cfg=cfg, out_dir=out_dir, dist=dist, device=device, say=say, stop=stop,
        train_split=train_split, val_split=val_split, model=model, optimizer=optimizer,
        n_params=model.get_num_params(), flops_per_token=model.flops_per_token(spec.model.block_size - 1),
        fingerprint=run_fingerprint(spec, cfg, data_identity(train_split) + data_identity(val_split), sharded),
        peak=peak_flops(device, cfg.peak_tflops), use_bf16=use_bf16, autocast=autocast, sharded=sharded,
    )


def build_model(spec: SizeSpec, dist: Dist, device: torch.device, sharded: bool) -> GPT:
    """The model on ``device``, initialised from the current seed as one process would.

    ``sharded`` (FSDP2): rank 0 initialises the whole model on the CPU; every rank builds it on
    the meta device, shards each block and then the root with ``fully_shard`` and receives its
    shards of rank 0's weights.
    """
    if not sharded:
        return GPT(spec.model).to(device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    full = GPT(spec.model).state_dict() if dist.main else {}
    with torch.device("meta"):
        model = GPT(spec.model)
    mesh = init_device_mesh(device.type, (dist.world,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def full_state(run: Run, optimizer: bool = True) -> tuple[dict, dict | None]:
    """The model's (and the optimiser's) whole state. Under FSDP a collective, gathered to rank
    0's CPU (the optimiser's state keyed by parameter name); the other ranks get empty dicts."""
    if not run.sharded:
        return run.model.state_dict(), run.optimizer.state_dict() if optimizer else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = get_model_state_dict(run.model, options=opts)
    return model, get_optimizer_state_dict(run.model, run.optimizer, options=opts) if optimizer else None


def load_state(run: Run, saved: dict) -> None:
    """Put a ``last.pt``'s model and optimiser state into the run (each FSDP rank takes its shards)."""
    if not run.sharded:
        run.model.load_state_dict(clean_state_dict(saved["model"]))
        run.optimizer.load_state_dict(saved["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(run.model, saved["model"], options=opts)
    set_optimizer_state_dict(run.model, run.optimizer, saved["optimizer"], options=opts)


def resume(run: Run) -> LoopState:
    """Resume: the loop's state (and the model's, the optimiser's, the RNG's) from ``last.pt``
    when it holds this run; else a fresh start, ``last.pt`` kept as ``last.pt.old`` (another
    run) or ``last.pt.corrupt`` (unreadable)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    state, window, saved = LoopState(), {"loss_sum": 0.0, "steps": 0}, None
    if run.last.exists():
        try:
            # Mapped, not read: the ranks of a node share one copy of the file's pages.
            saved = load_checkpoint(run.last, map_location="cpu", mmap=True)
        except ValueError as err:  # unreadable: keep it for inspection, start afresh
            if run.dist.main:
                os.replace(run.last, run.out_dir / "last.pt.corrupt")
            run.say(f"{err}; kept as last.pt.corrupt, starting afresh")
    if saved is not None and saved.get("fingerprint") == run.fingerprint:
        load_state(run, saved)
        state.step = int(saved["iter_num"])
        state.rows = list(saved["metrics"])
        state.elapsed_before = float(saved["elapsed_s"])
        state.best_val = float(saved["best_val_loss"])
        window = saved.get("window", window)
        torch.set_rng_state(saved["rng"]["torch"])
        run.say(f"resuming {run.spec.name} from {run.last} at step {state.step}/{run.cfg.steps}")
    elif saved is not None:
        if run.dist.main:
            os.replace(run.last, run.out_dir / "last.pt.old")
        run.say(f"{run.last} belongs to a different configuration or data: kept as last.pt.old, starting afresh")
    state.window_loss = torch.full((), float(window["loss_sum"]), device=run.device)
    state.window_steps = int(window["steps"])
    return state


def start(run: Run, state: LoopState) -> None:
    """Wrap the model (``torch.compile``, DDP), log the run and its plan, start the clocks."""
    spec, cfg, dist = run.spec, run.cfg, run.dist
    run.net = torch.compile(run.model) if cfg.compile else run.model
    if dist.world > 1:
        if not run.sharded:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Gradients live in DDP's buckets (no second copy of them: matters at 2100M).
            run.net = DDP(run.net, device_ids=[dist.local_rank] if run.device.type == "cuda" else None,
                          gradient_as_bucket_view=True)
        # The ranks compare stop flags every step on the CPU: a NCCL collective read on the
        # host would wait for the GPU.
        run.stop_group = torch.distributed.new_group(backend="gloo")
    run.say(
        f"training {spec.name}: {run.n_params:,} parameters, {spec.model.n_layer} layers x "
        f"{spec.model.n_embd} wide, {len(run.train_split.ids):,} training galaxies, "
        f"{run.seq} positions each, global batch {run.global_batch} galaxies "
        f"({run.global_batch * run.seq:,} tokens) = {cfg.micro_batch} x {run.accum} x {dist.world} rank(s)"
        f"{(' (FSDP)' if run.sharded else ' (DDP)') if dist.world > 1 else ''}"
        f"{', activation checkpointing' if cfg.activation_checkpointing else ''}"
        f"{', all positions fed (padded)' if cfg.pad_positions else ''}, "
        f"peak lr {spec.lr:g}, {cfg.steps} steps, device {run.device}, "
        f"{'bf16 autocast' if run.use_bf16 else 'float32'}, norm '{cfg.norm}'"
    )
    run.say(f"[{spec.name}] plan: {_plan(run)}")
    run.gather = BatchGatherer(run.train_split.tokens, cfg.micro_batch, run.device)
    run.net.train()
    state.t_start = state.window_t0 = time.perf_counter()
    state.elapsed, state.window_step0 = state.elapsed_before, state.step


def train_step(run: Run, state: LoopState) -> float:
    """Step: one optimiser step over this rank's micro-batches; returns its learning rate.

    The step's mean loss is added to the window on the device (no host synchronisation).
    """
    cfg, dist, accum = run.cfg, run.dist, run.accum
    lr = lr_at(state.step, run.spec.lr, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    for k in range(accum):
        # Global micro-batch m of this step; rank r takes m = k * world + r.
        m = k * dist.world + dist.rank
        idx = sample_indices((state.step * cfg.grad_accum + m) * cfg.micro_batch, cfg.micro_batch,
                             len(run.train_split.ids), cfg.seed)
        x = normalise(run.gather(idx), cfg.norm)  # on the device: (B, T, D) float32
        # DDP reduces gradients after the last micro-batch; FSDP reduce-scatters after each
        # (accumulating unsharded gradients would hold the whole model's on every rank).
        sync = k == accum - 1 or dist.world == 1 or run.sharded
        ctx = run.net.no_sync() if not sync else contextlib.nullcontext()
        with ctx, run.autocast:
            loss = step_loss(run.net, x, cfg.pad_positions)
        (loss / accum).backward()
        state.window_loss += loss.detach() / accum
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.window_steps += 1
    return lr


def step_loss(net: torch.nn.Module, x: torch.Tensor, pad_positions: bool = False) -> torch.Tensor:
    """The loss of a normalised batch (B, block_size, D): each position predicts the next patch.

    With ``pad_positions`` the model sees all ``block_size`` positions (1,024: matmul shapes
    that GPUs prefer) and the last one's prediction, which has no next patch, is left out:
    causal attention makes the other 1,023 predictions, and so the loss, the same.
    """
    if pad_positions:
        pred, _ = net(x)
        return F.huber_loss(pred[:, :-1].float(), x[:, 1:].float())
    return net(x[:, :-1], x[:, 1:])[1]


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Evaluate: the mean loss over the first ``eval_galaxies`` validation galaxies.

    Every rank evaluates the same galaxies: cheap next to training, and it keeps ranks in step.
    """
    cfg, model = run.cfg, run.model
    n_eval = len(run.val_split.ids) if cfg.eval_galaxies is None else min(cfg.eval_galaxies, len(run.val_split.ids))
    model.eval()
    total, count = torch.zeros((), device=run.device), 0
    for first in range(0, n_eval, cfg.micro_batch):
        end = min(first + cfg.micro_batch, n_eval)
        raw = torch.from_numpy(np.array(run.val_split.tokens[first:end])).to(run.device)
        x = normalise(raw, cfg.norm)
        with run.autocast:
            _, loss = model(x[:, :-1], x[:, 1:])
        total += loss.float() * (end - first)
        count += end - first
    model.train()
    return float(total / count)


def log_step(run: Run, state: LoopState, lr: float, do_eval: bool) -> None:
    """Log: close the window into a metrics row (evaluating first if ``do_eval``) and a log line.

    Reading the window's loss is the loop's only host synchronisation.

    Raises:
        NonFiniteLossError: If the window's training loss is NaN or infinite.
    """
    spec, cfg, dist = run.spec, run.cfg, run.dist
    if dist.world > 1:
        torch.distributed.all_reduce(state.window_loss, op=torch.distributed.ReduceOp.AVG)
    train_loss = float(state.window_loss) / state.window_steps
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({train_loss}) at step {state.step} of size {spec.name}; "
            f"the last good checkpoint ({run.last}) is kept. Try a lower learning rate."
        )
    val_loss = evaluate(run) if do_eval else float("nan")
    if do_eval:
        state.best_val = min(state.best_val, val_loss)
    now = time.perf_counter()
    state.elapsed = elapsed = state.elapsed_before + (now - state.t_start)
    tokens = state.step * run.global_batch * run.seq
    tok_s = (state.step - state.window_step0) * run.global_batch * run.seq / max(now - state.window_t0, 1e-9)
    mfu = tok_s * run.flops_per_token / (run.peak * dist.world) if run.peak else float("nan")
    state.rows.append(
        {
            "step": state.step,
            "tokens_seen": tokens,
            "flops": float(tokens * run.flops_per_token),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            "elapsed_s": elapsed,
            "tokens_per_s": tok_s,
            "mfu": mfu,
            "peak_mem_gb": peak_memory_gb(run.device),
            "gpu_hours": elapsed * (dist.world if run.device.type == "cuda" else 0) / 3600,
        }
    )
    eta = (cfg.steps - state.step) * (now - state.window_t0) / max(state.step - state.window_step0, 1)
    run.say(
        f"[{spec.name}] step {state.step}/{cfg.steps} | train loss {train_loss:.4f}"
        + (f" | val loss {val_loss:.4f}" if do_eval else "")
        + f" | lr {lr:.2e} | {tok_s / 1e3:.1f}k tokens/s"
        + (f" | MFU {100 * mfu:.1f}%" if run.peak else "")
        + f" | elapsed {duration(elapsed)}"
        + f" | ETA {duration(eta)}"
    )
    state.window_loss.zero_()
    state.window_steps, state.window_t0, state.window_step0 = 0, now, state.step


def save_last(run: Run, state: LoopState) -> None:
    """Checkpoint: write the resumable state to ``last.pt`` (atomically). Called on every rank
    (under FSDP gathering the state is a collective); rank 0 writes."""
    state.elapsed = state.elapsed_before + (time.perf_counter() - state.t_start)
    if not (run.dist.main or run.sharded):
        return
    model, optimizer = full_state(run)
    if not run.dist.main:
        return
    save_checkpoint(
        run.last,
        {
            **_v1_checkpoint(run, state, model),
            "optimizer": optimizer,
            "fingerprint": run.fingerprint,
            "metrics": state.rows,
            "elapsed_s": state.elapsed,
            "rng": {"torch": torch.get_rng_state()},
            # Losses of the steps since the last metrics row (non-empty only after a stop
            # signal), so the resumed run's next row averages the same steps.
            "window": {"loss_sum": float(state.window_loss), "steps": state.window_steps},
        },
    )


def _v1_checkpoint(run: Run, state: LoopState, model: dict) -> dict:
    """The AstroPT v1 checkpoint keys (``ckpt.pt``; ``last.pt`` adds its own)."""
    return {"model": model, "model_args": run.spec.model.to_dict(), "iter_num": state.step,
            "best_val_loss": state.best_val, "config": {"size": run.spec.name, "lr": run.spec.lr, **run.cfg.to_dict()}}


def _stop_agreed(run: Run) -> bool:
    """Whether any rank was asked to stop (all ranks must stop at the same step).

    Under DDP the ranks compare flags every step through their CPU group (``run.stop_group``),
    so the check never waits for the GPU.
    """
    if run.dist.world == 1:
        return run.stop.signum is not None
    flag = torch.tensor([0 if run.stop.signum is None else 1], dtype=torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=run.stop_group)
    return bool(flag[0])


def stop_at_boundary(run: Run, state: LoopState, saved: bool) -> None:
    """Checkpoint after a stop signal (SLURM's warning before a time limit or preemption):
    ``last.pt`` holds this step (``saved``: it already does), then raise :class:`Checkpointed`.

    Under DDP every rank saves (and resumes with) the ranks' mean window loss.
    """
    spec, dist = run.spec, run.dist
    if dist.world > 1:
        torch.distributed.all_reduce(state.window_loss, op=torch.distributed.ReduceOp.AVG)
    if state.window_steps and not math.isfinite(float(state.window_loss)):
        raise NonFiniteLossError(
            f"non-finite training loss at step {state.step} of size {spec.name} (found while "
            f"stopping for {run.stop.name or 'a stop signal'}); the last good checkpoint ({run.last}) is kept"
        )
    if not saved:
        save_last(run, state)
    if dist.world > 1:
        torch.distributed.barrier()
    signame = run.stop.name or "a stop signal (on another rank)"
    run.say(f"[{spec.name}] {signame}: checkpointed at step {state.step}/{run.cfg.steps} in {run.last}; "
            f"exiting with status {EXIT_CHECKPOINTED} so the job is retried and resumes here")
    raise Checkpointed(state.step, signame)


def finish(run: Run, state: LoopState) -> pd.DataFrame:
    """Finish: on rank 0 write ``ckpt.pt`` (no optimiser), ``ckpt.json`` and ``metrics.csv``,
    and remove ``last.pt`` (a later forced or re-planned run trains afresh, not "resumes" at
    the last step). Returns the metrics table."""
    metrics = pd.DataFrame(state.rows, columns=METRIC_COLUMNS)
    model = full_state(run, optimizer=False)[0] if run.dist.main or run.sharded else None
    if not run.dist.main:
        return metrics
    spec = run.spec
    save_checkpoint(run.out_dir / "ckpt.pt", _v1_checkpoint(run, state, model))
    record = run_record(run, state, metrics)
    record.write(run.out_dir / "ckpt.json")
    atomic_write(run.out_dir / "metrics.csv", lambda p: metrics.to_csv(p, index=False))
    run.last.unlink(missing_ok=True)
    run.say(f"[{spec.name}] done: final val loss {record.final_val_loss:.5f}, {run.n_params:,} parameters, "
            f"{duration(record.elapsed_s)} of training")
    return metrics


def run_record(run: Run, state: LoopState, metrics: pd.DataFrame) -> RunRecord:
    """The finished run's ``ckpt.json``: size, parameters, steps, losses, cost, provenance, config."""
    spec, cfg, device = run.spec, run.cfg, run.device
    tokens = state.step * run.global_batch * run.seq
    val = metrics["val_loss"]
    done = len(metrics) > 0
    return RunRecord(
        size=spec.name,
        params=run.n_params,
        steps=state.step,
        tokens_seen=int(tokens),
        flops=float(tokens * run.flops_per_token),
        final_val_loss=float(val.dropna().iloc[-1]) if val.notna().any() else float("nan"),
        best_val_loss=state.best_val,
        elapsed_s=float(metrics["elapsed_s"].iloc[-1]) if done else 0.0,
        gpu_hours=float(metrics["gpu_hours"].iloc[-1]) if done else 0.0,
        peak_mem_gb=float(metrics["peak_mem_gb"].max()) if done else 0.0,
        tokens_per_s=float(metrics["tokens_per_s"].median()) if done else 0.0,
        mfu=float(metrics["mfu"].median()) if done and run.peak else None,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        ranks=run.dist.world,
        seed=cfg.seed,
        provenance=provenance(cfg, device, run.use_bf16),
        model_args=spec.model.to_dict(),
        lr=spec.lr,
        train=cfg.to_dict(),
    )


# --------------------------------------------------------------------------- CLI


def _plan(run: Run) -> str:
    """The run's FLOPs and estimated time, and on GPUs its estimated peak memory per GPU (to
    hold against ``peak_mem_gb`` in metrics.csv), logged before its first step (astropt.compute)."""
    from astropt.compute import memory_estimate, run_cost

    spec, cfg, world = run.spec, run.cfg, run.dist.world
    cost = run_cost(spec.model.to_dict(), cfg.steps, run.global_batch,
                    peak_tflops=run.peak / 1e12 if run.peak else None, threads=cfg.threads)
    if run.device.type == "cuda":
        memory = memory_estimate(
            spec.model.to_dict(), cfg.micro_batch, parallel="fsdp" if run.sharded else "ddp",
            dtype="bfloat16" if run.use_bf16 else "float32", ranks=world,
            checkpointing=cfg.activation_checkpointing, pad_positions=cfg.pad_positions)
        when = (f"about {cost.gpu_hours / world * 60:.3g} min on {world} GPU(s) at an assumed "
                f"{cost.mfu:.0%} MFU of {cost.gpu_peak_flops / 1e12:.0f} TFLOP/s each; about "
                f"{memory.total_gb:.1f} GB per GPU")
    else:
        when = f"at least {cost.cpu_hours * 60:.3g} min on {cost.threads} CPU thread(s)"
    return f"{cost.flops:.3g} FLOPs for {cost.tokens:,} tokens; {when}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="JSON (a string or a file path) from spec_to_json")
    p.add_argument("--train-tokens", required=True, type=Path,
                   help="the training split: its manifest (results/tokens/train/index.parquet) or its folder")
    p.add_argument("--val-tokens", required=True, type=Path, help="the validation split, likewise")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the job, shared by the ranks on this node (default: torch's)")
    args = p.parse_args(argv)
    text = args.spec if args.spec.lstrip().startswith("{") else Path(args.spec).read_text()
    spec, cfg = spec_from_json(json.loads(text))
    if args.threads is not None:
        # torchrun starts LOCAL_WORLD_SIZE ranks on this node: split the job's CPUs.
        cfg.threads = max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    else:
        cfg.threads = torch.get_num_threads()
    # Also appended to out_dir/history.log: Snakemake deletes a rule's log before a retry,
    # and the lines of an interrupted attempt are worth keeping.
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "history.log", "a", buffering=1) as history:

        def log(*a) -> None:
            print(*a, flush=True)
            if int(os.environ.get("RANK", "0")) == 0:
                print(time.strftime("%Y-%m-%d %H:%M:%S"), *a, file=history)

        try:
            train(spec, cfg, args.train_tokens, args.val_tokens, args.out_dir, log=log)
        except Checkpointed:
            return EXIT_CHECKPOINTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
