"""Train one AstroPT model size: single process (CPU or one GPU) or DDP under torchrun.

Follows AstroPT v1's ``train.py`` (itself nanoGPT's): AdamW (betas 0.9/0.95, weight decay
on 2-D weights only), linear warm-up then cosine decay to LR/10, gradient clipping,
gradient accumulation, bf16 autocast on GPU, optional ``torch.compile``. The model sees
spiral-ordered patches: X = tokens[:-1], Y = tokens[1:], Huber loss.

Data: the token arrays written by the ``tokenise`` rule are memory-mapped, a batch of raw
patches is gathered into a (pinned) buffer, copied to the device and normalised there
(``astropt.loader``). The order of galaxies is a
fixed function of (seed, epoch), so step ``s`` always sees the same galaxies: resuming
needs only the step count, and each DDP rank takes a disjoint slice of every step.

Files in ``out_dir``:
    last.pt      resumable state (model, optimiser, step, metrics so far, RNG), written
                 atomically every ``checkpoint_interval`` steps; a rerun resumes from it.
    ckpt.pt      the final model (v1 checkpoint layout, no optimiser), written at the end.
    ckpt.json    a readable sidecar: size, parameters, steps, final losses, config, and the
                 run's provenance (training seed, data seed, threads, torch version, CPU
                 capability or GPU: :func:`provenance`).
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

Run::

    python -m astropt.train --spec spec.json --train-tokens results/tokens/train \\
        --val-tokens results/tokens/validation --out-dir results/models/416K --threads 2
    torchrun --standalone --nproc_per_node=8 -m astropt.train ...   # DDP, one rank per GPU
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from astropt.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from astropt.config import SizeSpec, TrainConfig, spec_from_json, spec_to_json  # noqa: F401 (re-exported)
from astropt.hardware import peak_flops, peak_memory_gb
from astropt.io import atomic_write
from astropt.loader import BatchGatherer
from astropt.model import GPT, GPTConfig
from astropt.tokenise import load_tokens, normalise

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
        self.step, self.signame = step, signame


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
        import signal

        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers only there
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

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


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        _PERM_CACHE.clear()  # one epoch at a time is enough
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]


def data_identity(split) -> str:
    """Hash of a token split: its galaxy ids in row order, array shape and dtype."""
    h = hashlib.sha256(f"{split.tokens.shape} {split.tokens.dtype}".encode())
    for chunk in range(0, len(split.ids), 100_000):
        h.update("\n".join(map(str, split.ids[chunk : chunk + 100_000])).encode())
    return h.hexdigest()[:16]


def run_fingerprint(spec: SizeSpec, cfg: TrainConfig, data: str = "") -> str:
    """Hash of everything that decides what is learned: model, settings (not logging or
    device) and the data (:func:`data_identity` of the splits)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL_KEYS}
    payload = json.dumps({"model": spec.model.to_dict(), "lr": spec.lr, "train": d, "data": data}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


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

    Resumes from ``out_dir/last.pt`` when it holds the same run (same fingerprint);
    a ``last.pt`` from a different configuration is kept as ``last.pt.old`` and training
    starts afresh.

    Returns:
        The metrics table (also written to ``metrics.csv``).

    Raises:
        Checkpointed: After SIGUSR1 / SIGTERM: ``last.pt`` was written at a step boundary
            (the CLI exits with :data:`EXIT_CHECKPOINTED`).
        NonFiniteLossError: If the training loss is NaN or infinite (``last.pt`` is kept).
    """
    out_dir = Path(out_dir)
    dist, device = _setup_distributed(cfg.device)
    say = log if dist.main else (lambda *a, **k: None)
    try:
        with StopRequest() as stop:
            return _train(spec, cfg, Path(train_tokens), Path(val_tokens), out_dir, dist, device, say, stop)
    finally:
        if dist.world > 1:
            global _STOP_GROUP
            _STOP_GROUP = None
            torch.distributed.destroy_process_group()


def _train(spec, cfg, train_tokens, val_tokens, out_dir, dist, device, say, stop: StopRequest) -> pd.DataFrame:
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
    accum = cfg.grad_accum // dist.world  # micro-batches per rank per step
    global_batch = cfg.micro_batch * cfg.grad_accum
    seq = spec.model.block_size - 1  # positions trained per galaxy
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )

    torch.manual_seed(cfg.seed)
    model = GPT(spec.model).to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, spec.lr, cfg.betas, device.type)
    n_params = model.get_num_params()
    flops_per_token = model.flops_per_token(seq)
    fingerprint = run_fingerprint(spec, cfg, data_identity(train_split) + data_identity(val_split))
    peak = peak_flops(device, cfg.peak_tflops)  # per device; None: no MFU (CPU, unknown GPU)
    n_gpus = dist.world if device.type == "cuda" else 0

    # ---------------------------------------------------------------- resume
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.pt"
    step, rows, elapsed_before, best_val = 0, [], 0.0, float("inf")
    window_resume = {"loss_sum": 0.0, "steps": 0}
    state = None
    if last.exists():
        try:
            state = load_checkpoint(last, map_location="cpu")
        except ValueError as err:  # unreadable: keep it for inspection, start afresh
            if dist.main:
                os.replace(last, out_dir / "last.pt.corrupt")
            say(f"{err}; kept as last.pt.corrupt, starting afresh")
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(clean_state_dict(state["model"]))
            optimizer.load_state_dict(state["optimizer"])
            step = int(state["iter_num"])
            rows = list(state["metrics"])
            elapsed_before = float(state["elapsed_s"])
            best_val = float(state["best_val_loss"])
            window_resume = state.get("window", {"loss_sum": 0.0, "steps": 0})
            torch.set_rng_state(state["rng"]["torch"])
            say(f"resuming {spec.name} from {last} at step {step}/{cfg.steps}")
        else:
            if dist.main:
                os.replace(last, out_dir / "last.pt.old")
            say(f"{last} belongs to a different configuration or data: kept as last.pt.old, starting afresh")
        del state

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Gradients live in DDP's buckets (no second copy of them: matters at 2100M).
        model = DDP(model, device_ids=[dist.local_rank] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True)

    say(
        f"training {spec.name}: {n_params:,} parameters, {spec.model.n_layer} layers x "
        f"{spec.model.n_embd} wide, {len(train_split.ids):,} training galaxies, "
        f"{seq} positions each, global batch {global_batch} galaxies "
        f"({global_batch * seq:,} tokens) = {cfg.micro_batch} x {accum} x {dist.world} rank(s), "
        f"peak lr {spec.lr:g}, {cfg.steps} steps, device {device}, "
        f"{'bf16 autocast' if use_bf16 else 'float32'}, norm '{cfg.norm}'"
    )

    say(f"[{spec.name}] plan: {_plan(spec, cfg, global_batch, device, dist.world, peak)}")

    gather = BatchGatherer(train_split.tokens, cfg.micro_batch, device)

    def batch(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalise(gather(indices), cfg.norm)  # on the device: (B, T, D) float32
        return x[:, :-1], x[:, 1:]

    n_eval = len(val_split.ids) if cfg.eval_galaxies is None else min(cfg.eval_galaxies, len(val_split.ids))

    @torch.no_grad()
    def evaluate() -> float:
        raw_model.eval()
        total, count = torch.zeros((), device=device), 0
        # Every rank evaluates the same galaxies; cheap next to training, keeps ranks in step.
        for start in range(0, n_eval, cfg.micro_batch):
            stop = min(start + cfg.micro_batch, n_eval)
            raw = torch.from_numpy(np.array(val_split.tokens[start:stop])).to(device)
            x = normalise(raw, cfg.norm)
            with autocast:
                _, loss = raw_model(x[:, :-1], x[:, 1:])
            total += loss.float() * (stop - start)
            count += stop - start
        raw_model.train()
        return float(total / count)

    def save_state(path: Path) -> None:
        save_checkpoint(
            path,
            {
                "model": raw_model.state_dict(),
                "model_args": spec.model.to_dict(),
                "optimizer": optimizer.state_dict(),
                "iter_num": step,
                "best_val_loss": best_val,
                "config": {"size": spec.name, "lr": spec.lr, **cfg.to_dict()},
                "fingerprint": fingerprint,
                "metrics": rows,
                "elapsed_s": elapsed,
                "rng": {"torch": torch.get_rng_state()},
                # Losses of the steps since the last metrics row (non-empty only after a stop
                # signal), so the resumed run's next row averages the same steps.
                "window": {"loss_sum": float(window_loss), "steps": window_steps},
            },
        )

    # ---------------------------------------------------------------- loop
    model.train()
    t_start = time.perf_counter()
    elapsed = elapsed_before
    window_loss = torch.full((), float(window_resume["loss_sum"]), device=device)
    window_steps, window_t0, window_step0 = int(window_resume["steps"]), time.perf_counter(), step
    while step < cfg.steps:
        lr = lr_at(step, spec.lr, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for k in range(accum):
            # Global micro-batch m of this step; rank r takes m = k * world + r.
            m = k * dist.world + dist.rank
            idx = sample_indices((step * cfg.grad_accum + m) * cfg.micro_batch, cfg.micro_batch,
                                 len(train_split.ids), cfg.seed)
            x, y = batch(idx)
            sync = k == accum - 1 or dist.world == 1
            ctx = model.no_sync() if (dist.world > 1 and not sync) else contextlib.nullcontext()
            with ctx, autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
            window_loss += loss.detach() / accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1

        last_step = step == cfg.steps
        do_eval = step % cfg.eval_interval == 0 or last_step
        do_ckpt = step % cfg.checkpoint_interval == 0 or last_step
        # Check the loss before every checkpoint so a saved state is never non-finite.
        if step % cfg.log_interval == 0 or do_eval or do_ckpt:
            # The only host synchronisation: once per log interval.
            if dist.world > 1:
                torch.distributed.all_reduce(window_loss, op=torch.distributed.ReduceOp.AVG)
            train_loss = float(window_loss) / window_steps
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({train_loss}) at step {step} of size {spec.name}; "
                    f"the last good checkpoint ({last}) is kept. Try a lower learning rate."
                )
            val_loss = evaluate() if do_eval else float("nan")
            if do_eval:
                best_val = min(best_val, val_loss)
            now = time.perf_counter()
            elapsed = elapsed_before + (now - t_start)
            tok_s = (step - window_step0) * global_batch * seq / max(now - window_t0, 1e-9)
            mfu = tok_s * flops_per_token / (peak * dist.world) if peak else float("nan")
            rows.append(
                {
                    "step": step,
                    "tokens_seen": step * global_batch * seq,
                    "flops": float(step * global_batch * seq * flops_per_token),
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": lr,
                    "elapsed_s": elapsed,
                    "tokens_per_s": tok_s,
                    "mfu": mfu,
                    "peak_mem_gb": peak_memory_gb(device),
                    "gpu_hours": elapsed * n_gpus / 3600,
                }
            )
            eta = (cfg.steps - step) * (now - window_t0) / max(step - window_step0, 1)
            say(
                f"[{spec.name}] step {step}/{cfg.steps} | train loss {train_loss:.4f}"
                + (f" | val loss {val_loss:.4f}" if do_eval else "")
                + f" | lr {lr:.2e} | {tok_s / 1e3:.1f}k tokens/s"
                + (f" | MFU {100 * mfu:.1f}%" if peak else "")
                + f" | elapsed {_format_eta(elapsed)}"
                + f" | ETA {_format_eta(eta)}"
            )
            window_loss.zero_()
            window_steps, window_t0, window_step0 = 0, now, step
        if dist.main and do_ckpt:
            elapsed = elapsed_before + (time.perf_counter() - t_start)
            save_state(last)
        if not last_step and _stop_agreed(stop, dist):
            # SLURM's warning before a time limit or preemption: save, exit, be retried.
            if dist.world > 1:  # every rank then saves (and resumes with) the ranks' mean
                torch.distributed.all_reduce(window_loss, op=torch.distributed.ReduceOp.AVG)
            if window_steps and not math.isfinite(float(window_loss)):
                raise NonFiniteLossError(
                    f"non-finite training loss at step {step} of size {spec.name} (found while "
                    f"stopping for {stop.name or 'a stop signal'}); the last good checkpoint ({last}) is kept"
                )
            if dist.main and not do_ckpt:
                elapsed = elapsed_before + (time.perf_counter() - t_start)
                save_state(last)
            if dist.world > 1:
                torch.distributed.barrier()
            signame = stop.name or "a stop signal (on another rank)"
            say(f"[{spec.name}] {signame}: checkpointed at step {step}/{cfg.steps} in {last}; "
                f"exiting with status {EXIT_CHECKPOINTED} so the job is retried and resumes here")
            raise Checkpointed(step, signame)

    # ---------------------------------------------------------------- outputs
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    if dist.main:
        final_val = float(metrics["val_loss"].dropna().iloc[-1]) if metrics["val_loss"].notna().any() else float("nan")
        save_checkpoint(
            out_dir / "ckpt.pt",
            {
                "model": raw_model.state_dict(),
                "model_args": spec.model.to_dict(),
                "iter_num": step,
                "best_val_loss": best_val,
                "config": {"size": spec.name, "lr": spec.lr, **cfg.to_dict()},
            },
        )
        sidecar = {
            "size": spec.name,
            "params": n_params,
            "steps": step,
            "tokens_seen": int(step * global_batch * seq),
            "flops": float(step * global_batch * seq * flops_per_token),
            "final_val_loss": final_val,
            "best_val_loss": best_val,
            "elapsed_s": float(metrics["elapsed_s"].iloc[-1]) if len(metrics) else 0.0,
            "gpu_hours": float(metrics["gpu_hours"].iloc[-1]) if len(metrics) else 0.0,
            "peak_mem_gb": float(metrics["peak_mem_gb"].max()) if len(metrics) else 0.0,
            "tokens_per_s": float(metrics["tokens_per_s"].median()) if len(metrics) else 0.0,
            "mfu": float(metrics["mfu"].median()) if len(metrics) and peak else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "ranks": dist.world,
            "seed": cfg.seed,
            "provenance": provenance(cfg, device, use_bf16),
            "model_args": spec.model.to_dict(),
            "lr": spec.lr,
            "train": cfg.to_dict(),
        }
        atomic_write(out_dir / "ckpt.json", lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n"))
        atomic_write(out_dir / "metrics.csv", lambda p: metrics.to_csv(p, index=False))
        # The run is complete: a later (forced or re-planned) run must train afresh,
        # not "resume" at the last step.
        last.unlink(missing_ok=True)
        say(f"[{spec.name}] done: final val loss {final_val:.5f}, {n_params:,} parameters, "
            f"{_format_eta(sidecar['elapsed_s'])} of training")
    return metrics


_STOP_GROUP = None


def _stop_agreed(stop: StopRequest, dist: Dist) -> bool:
    """Whether any rank was asked to stop (all ranks must stop at the same step).

    Under DDP the ranks compare flags every step through a CPU (gloo) group of their own, so
    the check never waits for the GPU: a NCCL collective read on the host would.
    """
    global _STOP_GROUP
    if dist.world == 1:
        return stop.signum is not None
    if _STOP_GROUP is None:
        _STOP_GROUP = torch.distributed.new_group(backend="gloo")
    flag = torch.tensor([0 if stop.signum is None else 1], dtype=torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=_STOP_GROUP)
    return bool(flag[0])


# --------------------------------------------------------------------------- CLI


def _plan(spec: SizeSpec, cfg: TrainConfig, global_batch: int, device: torch.device, world: int,
          peak: float | None) -> str:
    """The run's FLOPs and estimated time, logged before its first step (astropt.compute)."""
    from astropt.compute import run_cost

    cost = run_cost(spec.model.to_dict(), cfg.steps, global_batch,
                    peak_tflops=peak / 1e12 if peak else None, threads=cfg.threads)
    if device.type == "cuda":
        when = (f"about {cost.gpu_hours / world * 60:.3g} min on {world} GPU(s) at an assumed "
                f"{cost.mfu:.0%} MFU of {cost.gpu_peak_flops / 1e12:.0f} TFLOP/s each")
    else:
        when = f"at least {cost.cpu_hours * 60:.3g} min on {cost.threads} CPU thread(s)"
    return f"{cost.flops:.3g} FLOPs for {cost.tokens:,} tokens; {when}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="JSON (a string or a file path) from spec_to_json")
    p.add_argument("--train-tokens", required=True, type=Path)
    p.add_argument("--val-tokens", required=True, type=Path)
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
