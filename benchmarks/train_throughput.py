"""Training-step throughput: an AstroPT v1-style step vs this project's step, side by side.

For each model size, in one run and from the same initial weights and the same data:

1. **reference** (``_v1_model.py``, written from ``shared/docs/astropt-facts.md``): v1's model
   (SDPA attention, GELU written out element by element, bias-free LayerNorm), v1's AdamW
   (decay on 2-D weights, fused on CUDA), bf16 autocast on CUDA, ``torch.compile`` when
   ``--compile`` (v1 compiled), micro-batches of 8 galaxies with gradient accumulation up to
   the global batch, each next micro-batch copied from pinned host memory with a blocking
   ``.to(device)`` between forward and backward, as v1's loop did;
2. **ours**: ``astropt.model.GPT`` with ``GPT.configure_optimizer`` (fused AdamW on CUDA), bf16
   autocast on CUDA, ``torch.compile`` when ``--compile``, the largest micro-batch that fits
   (``--micro-batch``) with accumulation to the same global batch, and the data path of
   ``astropt/train.py``: raw uint8 patches, stored as a token shard (in a temporary folder) and
   memory-mapped as training reads its split, gathered into pinned staging buffers by
   ``astropt.loader.BatchGatherer``, copied with ``non_blocking=True`` and normalised per patch
   on the device; the loss is accumulated on the device, so nothing in the step waits for
   the GPU. The step mirrors the training loop of ``astropt/train.py``.

Variants of ours (``--variants``, each measured as its own row; ``ours`` plus options joined
by ``+``): ``pad`` feeds all ``seq`` positions, the last one's loss left out
(``train.pad_positions``: matmul shapes that are multiples of 128); ``ac`` activation
checkpointing per block; ``compile=MODE`` a ``torch.compile`` mode (``max-autotune``,
``reduce-overhead`` ...); ``eager`` no compilation; ``mb=N`` another micro-batch; ``fp8`` the
Linear layers as torchao ``Float8Linear`` (CUDA, ``pip install torchao``), its loss checked
against the bf16 reference like every row. The reference can be measured at several
micro-batches (``--reference-micro-batch 8 32``): the speed-ups are against its best.

Both steps clip gradients at 1.0 and use AdamW betas (0.9, 0.95), weight decay 0.1 and the
size's peak learning rate held constant. Every step trains on the same global batch of
synthetic galaxies (smooth blobs plus noise, patchified, per-patch normalised as the paper).

Printed per size and path: tokens/s (trained positions, ``T - 1`` per galaxy), images/s, MFU
(``GPT.flops_per_token(T - 1)`` x tokens/s / peak, peak from the GPU's name or
``--peak-flops``; "n/a" otherwise), peak memory (``torch.cuda.max_memory_allocated`` per path
on CUDA; on the CPU the process's peak resident set so far, which never decreases) and
ours / the best reference, and for ours the peak memory :func:`astropt.compute.memory_estimate`
expects (``est mem``; on CUDA measured / estimated, which should lie within 15 %: the
estimate counts an eager step, compilation may fuse some saved tensors away). ``--check-loss N`` first runs
the first reference and every variant for N steps and prints, per variant, the largest relative
difference of its loss curve from the reference's: float32 on the CPU should agree to about 1e-5,
bf16 on a GPU to within bf16 noise (about 1e-2). The goals are judged on the fastest variant
whose loss check passed.

Run::

    PYTHONPATH=. python benchmarks/train_throughput.py                  # CPU: 42K, 416K
    PYTHONPATH=. python benchmarks/train_throughput.py --check-loss 20  # GPU: 21M 89M 309M
    PYTHONPATH=. python benchmarks/train_throughput.py --check-loss 20 --reference-micro-batch 8 32 \
        --variants ours ours+pad ours+pad+compile=max-autotune-no-cudagraphs ours+eager ours+fp8
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import itertools
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _v1_model, when imported from tests

from _v1_model import (  # noqa: E402
    V1_MICRO_BATCH,
    V1GPT,
    v1_optimizer,
    v1_patch_normalise,
    v1_train_step,
)

from astropt.config import load_config  # noqa: E402
from astropt.loader import BatchGatherer  # noqa: E402
from astropt import hardware  # noqa: E402
from astropt.model import GPT, PRESET_LR, PRESETS, GPTConfig  # noqa: E402
from astropt.compute import memory_estimate  # noqa: E402
from astropt.patches import normalise  # noqa: E402
from astropt.shards import ShardedTokens, ShardWriter, shard_stem  # noqa: E402
from astropt.train import step_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The facts doc's v1 step on one H100 (torch.compile, bf16, fused AdamW, T = 1023):
# size -> ((micro-batch, tokens/s, MFU), ...).
ANCHORS_H100 = {
    "21M": ((8, 0.70e6, 0.115), (32, 2.14e6, 0.35)),
    "89M": ((8, 0.46e6, 0.30), (32, 0.64e6, 0.42)),
    "309M": ((8, 0.18e6, 0.39), (32, 0.22e6, 0.47)),
}
ANCHOR_CPU = ("facts doc, 2-core CPU, float32 step, 63 tokens x 768 values, batch 32: 0.08M params "
              "~1,100 images/s, 0.22M ~800, 1.1M ~240, 2.3M ~120, 5.5M ~57")

# The goals on one H100 (H200: same bf16 peak), for the best variant of ours:
# size -> (measure, at least), the speed-up against the reference's best micro-batch.
GOALS = {"21M": ("speed-up", 1.5), "89M": ("speed-up", 1.3), "309M": ("MFU", 0.55)}
MEMORY_ESTIMATE_TOLERANCE = 0.15  # |measured / estimated - 1| of an eager step on CUDA
LOSS_TOLERANCE = {"float32": 1e-4, "bf16": 2e-2}  # max relative loss-curve difference

WEIGHT_DECAY, BETAS, GRAD_CLIP = 0.1, (0.9, 0.95), 1.0
MEMORY_HEADROOM = 0.9  # a probed micro-batch fits if its peak stays under 90 % of the GPU


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What every path of every size shares."""

    device: torch.device
    bf16: bool
    compile: bool
    global_batch: int
    seq: int  # tokens per galaxy (block size); T - 1 positions are trained
    patch_size: int
    steps: int
    warmup: int
    check_loss: int
    n_chan: int = 3

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "float32"


@dataclass(frozen=True)
class Variant:
    """One way of running our step (see the module docstring): ``ours+pad+compile=max-autotune``."""

    name: str = "ours"
    pad: bool = False
    checkpointing: bool = False
    fp8: bool = False
    compile: bool | None = None  # None: the run's --compile
    compile_mode: str | None = None
    micro_batch: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Variant":
        flags = {"pad": {"pad": True}, "ac": {"checkpointing": True}, "fp8": {"fp8": True}, "eager": {"compile": False}}
        head, *options = text.split("+")
        if head != "ours":
            raise ValueError(f"variant {text!r} must start with 'ours'")
        kw: dict = {}
        for opt in options:
            key, _, value = opt.partition("=")
            if key in flags and not value:
                kw.update(flags[key])
            elif key == "compile" and value:
                kw.update(compile=True, compile_mode=value)
            elif key == "mb" and value.isdigit() and int(value) > 0:
                kw["micro_batch"] = int(value)
            else:
                raise ValueError(f"unknown option {opt!r} of variant {text!r} (pad, ac, fp8, eager, compile=MODE, mb=N)")
        return cls(name=text, **kw)


@dataclass
class Result:
    """One path of one size."""

    path: str
    micro_batch: int
    accum: int
    seconds: float
    tokens_per_s: float
    images_per_s: float
    mfu: float | None
    peak_mem_bytes: int
    check_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    estimate_bytes: float | None = None  # memory_estimate of this path (ours only)


def size_config(name: str, setup: Setup, config_path: Path) -> tuple[GPTConfig, float]:
    """Architecture and peak LR of a size: a paper preset or a ``custom_sizes`` entry."""
    if name in PRESETS:
        p, lr = PRESETS[name], PRESET_LR[name]
        arch = (p.n_layer, p.n_head, p.n_embd)
    else:
        custom = load_config(config_path).raw["custom_sizes"]
        if name not in custom:
            raise SystemExit(f"unknown size {name!r}: not a preset ({', '.join(PRESETS)}) "
                             f"nor in custom_sizes of {config_path} ({', '.join(custom) or 'none'})")
        c = custom[name]
        arch, lr = (c["n_layer"], c["n_head"], c["n_embd"]), c["lr"]
    cfg = GPTConfig(n_layer=arch[0], n_head=arch[1], n_embd=arch[2], n_chan=setup.n_chan,
                    patch_size=setup.patch_size, block_size=setup.seq)
    return cfg, float(lr)


def synthetic_tokens(n: int, seq: int, patch_size: int, n_chan: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 galaxies as raster-ordered patch tokens ``(n, seq, patch_size**2 * n_chan)``.

    Each image is an elliptical Gaussian blob (random centre, size, colour) on a noisy sky,
    so that neighbouring patches are predictable and the loss curves have a shape.
    """
    side = int(round(seq**0.5))
    if side * side != seq:
        raise SystemExit(f"--seq must be a square number of patches, got {seq}")
    px = side * patch_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    out = np.empty((n, seq, patch_size * patch_size * n_chan), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        sy, sx = rng.uniform(0.05, 0.25, 2)
        blob = np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
        colour = rng.uniform(80, 220, n_chan).astype(np.float32)
        img = 20 + blob[..., None] * colour + rng.normal(0, 6, (px, px, n_chan)).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
        # (h p1) (w p2) c -> (h w) (p1 p2 c): channel fastest inside each patch
        out[i] = img.reshape(side, patch_size, side, patch_size, n_chan).transpose(0, 2, 1, 3, 4).reshape(seq, -1)
    return out


def token_shard(tokens: np.ndarray, folder: Path) -> ShardedTokens:
    """``tokens`` written as one token shard in ``folder`` by the tokenise jobs' writer
    (:class:`astropt.shards.ShardWriter`) and memory-mapped as :class:`astropt.shards.ShardedTokens`,
    the class a training split's tokens are read through."""
    with ShardWriter(folder, tokens.shape[1:], tokens.dtype) as writer:
        writer.start(0, len(tokens), "synthetic", ())
        writer.add(tokens)
        writer.record["ids"] += [str(i) for i in range(len(tokens))]
        writer.finish()
    return ShardedTokens([folder / f"{shard_stem(0)}.npy"], [len(tokens)], tokens.shape[1:], tokens.dtype)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """Dense bf16 peak FLOP/s of ``device``: ``override`` (FLOP/s), astropt.hardware's table, or None."""
    return hardware.peak_flops(device, override / 1e12 if override else None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(setup: Setup):
    if setup.bf16:
        return torch.autocast(setup.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# The two training steps
# ---------------------------------------------------------------------------------------------
class ReferencePath:
    """The v1-style step (:func:`_v1_model.v1_train_step`) on the benchmark's global batch."""

    name = "reference"

    def __init__(self, cfg: GPTConfig, init_state: dict, tokens: np.ndarray, lr: float, setup: Setup,
                 micro_batch: int = V1_MICRO_BATCH):
        self.setup, self.lr, self.init_state = setup, lr, init_state
        self.micro_batch = micro_batch
        self.accum = setup.global_batch // micro_batch
        self.name = "reference" if micro_batch == V1_MICRO_BATCH else f"reference@{micro_batch}"
        self.model = V1GPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.input_dim).to(setup.device)
        self.step_model = torch.compile(self.model) if setup.compile else self.model
        self.params = list(self.model.parameters())
        # v1's DataLoader handed over per-patch normalised float X / Y batches in pinned memory.
        pin = setup.device.type == "cuda"
        self.host_batches = []
        for j in range(self.accum):
            x = v1_patch_normalise(torch.from_numpy(tokens[j * self.micro_batch:(j + 1) * self.micro_batch]))
            self.host_batches.append(tuple(t.contiguous().pin_memory() if pin else t.contiguous()
                                           for t in (x[:, :-1], x[:, 1:])))
        self.reset()

    def reset(self) -> None:
        """Initial weights, a fresh optimiser, the data stream from its start."""
        self.model.load_state_dict(self.init_state)
        self.optimizer = v1_optimizer(self.model, self.lr, WEIGHT_DECAY, BETAS, self.setup.device.type)
        self.batches = itertools.cycle(self.host_batches)
        hx, hy = next(self.batches)
        self.current = (hx.to(self.setup.device), hy.to(self.setup.device))

    def step(self, loss_out: torch.Tensor) -> None:
        self.current = v1_train_step(self.step_model, self.params, self.optimizer, self.batches, self.current,
                                     self.accum, self.setup.device, self.setup.bf16, GRAD_CLIP, loss_out)


class OursPath:
    """This project's step, as the training loop of ``astropt/train.py`` runs it."""

    def __init__(self, cfg: GPTConfig, init_state: dict, tokens: ShardedTokens, lr: float, setup: Setup,
                 micro_batch: int, variant: Variant = Variant()):
        self.setup, self.lr, self.init_state, self.variant = setup, lr, init_state, variant
        self.name = variant.name
        micro_batch = variant.micro_batch or micro_batch
        self.micro_batch, self.accum = micro_batch, setup.global_batch // micro_batch
        self.model = GPT(cfg).to(setup.device)
        self.model.activation_checkpointing = variant.checkpointing
        if variant.fp8:
            from torchao.float8 import convert_to_float8_training

            convert_to_float8_training(self.model, module_filter_fn=lambda m, _: isinstance(m, nn.Linear) and (
                m.in_features % 16 == 0 and m.out_features % 16 == 0))
        compiled = setup.compile if variant.compile is None else variant.compile
        self.step_model = torch.compile(self.model, mode=variant.compile_mode) if compiled else self.model
        self.params = list(self.model.parameters())
        self.gather = BatchGatherer(tokens, micro_batch, setup.device)  # pinned staging on CUDA
        self.micro_indices = [np.arange(j * micro_batch, (j + 1) * micro_batch) for j in range(self.accum)]
        self.reset()

    def reset(self) -> None:
        """Initial weights and a fresh optimiser."""
        self.model.load_state_dict(self.init_state)
        self.optimizer = self.model.configure_optimizer(WEIGHT_DECAY, self.lr, BETAS, self.setup.device.type)

    def step(self, loss_out: torch.Tensor) -> None:
        for idx in self.micro_indices:
            x = normalise(self.gather(idx), "patch")  # non-blocking copy, normalised on the device
            with _autocast(self.setup):
                loss = step_loss(self.step_model, x, self.variant.pad)
            (loss / self.accum).backward()
            loss_out += loss.detach() / self.accum  # on the device: no host synchronisation
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def fits(cfg: GPTConfig, micro_batch: int, setup: Setup) -> bool:
    """Whether one eager training micro-step of ``micro_batch`` galaxies (model, AdamW state,
    activations) stays under :data:`MEMORY_HEADROOM` of the GPU's memory."""
    device = setup.device
    try:
        model = GPT(cfg).to(device)
        opt = model.configure_optimizer(WEIGHT_DECAY, 1e-4, BETAS, device.type)
        x = torch.randn(micro_batch, cfg.block_size, cfg.input_dim, device=device)
        with _autocast(setup):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        _sync(device)
        total = torch.cuda.get_device_properties(device).total_memory
        return torch.cuda.max_memory_allocated(device) <= MEMORY_HEADROOM * total
    except torch.cuda.OutOfMemoryError:
        return False


def auto_micro_batch(cfg: GPTConfig, setup: Setup) -> int:
    """The largest power of two dividing the global batch that fits (probed on CUDA; on the
    CPU the largest power of two dividing it)."""
    m = setup.global_batch & -setup.global_batch  # largest power of two dividing it
    if setup.device.type != "cuda":
        return m
    while m > 1:
        ok = fits(cfg, m, setup)
        _free(setup.device)
        if ok:
            return m
        m //= 2
    return 1


def measure(path, setup: Setup, flops_per_token: int, peak: float | None) -> Result:
    """Loss check (``setup.check_loss`` steps, from the initial weights), then ``warmup``
    untimed and ``steps`` timed optimiser steps."""
    device = setup.device
    check = torch.zeros(setup.check_loss, device=device)
    for s in range(setup.check_loss):
        path.step(check[s])
    if setup.check_loss:
        path.reset()
    scratch = torch.zeros((), device=device)
    for _ in range(setup.warmup):
        path.step(scratch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(setup.steps):
        path.step(scratch)
    _sync(device)
    seconds = time.perf_counter() - t0
    images_per_s = setup.steps * setup.global_batch / seconds
    tokens_per_s = images_per_s * (setup.seq - 1)
    return Result(
        path=path.name, micro_batch=path.micro_batch, accum=path.accum, seconds=seconds,
        tokens_per_s=tokens_per_s, images_per_s=images_per_s,
        mfu=flops_per_token * tokens_per_s / peak if peak else None,
        peak_mem_bytes=_peak_memory(device), check_losses=check.cpu().numpy(),
        estimate_bytes=_estimate(path, setup) if isinstance(path, OursPath) else None,
    )


def _estimate(path: "OursPath", setup: Setup) -> float:
    """What :func:`astropt.compute.memory_estimate` expects of this path's step on one GPU."""
    return memory_estimate(path.model.config.to_dict(), path.micro_batch, dtype="bfloat16" if setup.bf16 else "float32",
                           checkpointing=path.variant.checkpointing, pad_positions=path.variant.pad).total


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _mem(n: int, device: torch.device) -> str:
    return f"{n / 2**30:.2f} GiB" if device.type == "cuda" else f"{n / 2**20:.0f} MiB"


def loss_difference(ref: np.ndarray, ours: np.ndarray) -> float:
    """Largest relative difference of two loss curves: ``max |ours - ref| / |ref|``."""
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


def print_goals(rows: list[dict], device: torch.device, judged: bool) -> None:
    """The issue's goal lines (:data:`GOALS`), judged with each size's best variant on an H100 / H200."""
    print("goals: " + "; ".join(f">= {v:.0%} MFU at {s}" if m == "MFU" else f">= {v}x the reference's best "
                                f"tokens/s at {s}" for s, (m, v) in GOALS.items()))
    if not judged:
        print(f"  not judged: the goals are for one H100 or H200, this run is on {device_name(device)}")
        return
    by_size = {r["size"]: r for r in rows}
    for size, (measure_name, goal) in GOALS.items():
        r = by_size.get(size)
        if r is None:
            print(f"  {size} {measure_name} not measured")
            continue
        best = r["best"]
        if best is None:
            print(f"  {size} {measure_name}: NOT met (no variant passed its loss check)")
            continue
        value = best.mfu if measure_name == "MFU" else best.tokens_per_s / r["reference"].tokens_per_s
        shown = "n/a" if value is None else (f"{value:.1%}" if measure_name == "MFU" else f"{value:.2f}x")
        met = value is not None and value >= goal
        print(f"  {size} {measure_name} {shown} ({best.path}): {'met' if met else 'NOT met'}")


def print_anchors(sizes: list[str], device: torch.device) -> None:
    """The facts doc's measured v1 figures, for comparison with the reference rows."""
    if device.type != "cuda":
        print(f"for comparison ({ANCHOR_CPU})")
        return
    lines = [f"  {s}: " + ", ".join(f"{tok / 1e6:.2f}M tokens/s at micro-batch {mb} ({mfu:.1%} MFU)"
                                    for mb, tok, mfu in ANCHORS_H100[s])
             for s in sizes if s in ANCHORS_H100]
    if lines:
        print("for comparison, the facts doc's v1 step on one H100 (compile, bf16, fused AdamW, "
              "T = 1023, no accumulation):")
        print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", help="paper presets or custom_sizes of --config "
                   "(default: 21M 89M 309M on CUDA, 42K 416K on the CPU)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                   help="where custom (non-preset) sizes are defined")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default: 3 / 1)")
    p.add_argument("--global-batch", type=int, help="galaxies per optimiser step, a multiple of 8 "
                   "(default: the paper's 320 = 8 x 40 on CUDA, 32 on the CPU)")
    p.add_argument("--micro-batch", type=int, help="our micro-batch (default: the largest power of two "
                   "dividing the global batch that fits, probed on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models, as v1 did (default: on CUDA only)")
    p.add_argument("--seq", type=int, help="tokens per galaxy, a square (default: 1024, the paper's "
                   "512 / 16 px patches, on CUDA; 64 on the CPU)")
    p.add_argument("--patch-size", type=int, help="patch side in px (default: 16 on CUDA, 8 on the CPU)")
    p.add_argument("--check-loss", type=int, default=0, metavar="N",
                   help="first run both steps N steps from the same weights and data and compare losses")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU (default: from the GPU's name)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 on the CPU, where "
                   "more threads on a shared machine make timings erratic; torch's default on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["ours"], metavar="VARIANT",
                   help="ways of running our step, each its own row: ours plus +pad, +ac, +fp8, +eager, "
                   "+compile=MODE, +mb=N (default: ours)")
    p.add_argument("--reference-micro-batch", nargs="+", type=int, default=[V1_MICRO_BATCH], metavar="N",
                   help=f"micro-batches of the reference (default: v1's {V1_MICRO_BATCH}); speed-ups are "
                   "against the fastest")
    args = p.parse_args(argv)
    try:
        args.variants = [Variant.parse(v) for v in args.variants]
    except ValueError as err:
        p.error(str(err))
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    defaults = dict(sizes=["21M", "89M", "309M"] if cuda else ["42K", "416K"],
                    warmup=3 if cuda else 1, global_batch=320 if cuda else 32, compile=cuda,
                    seq=1024 if cuda else 64, patch_size=16 if cuda else 8,
                    threads=torch.get_num_threads() if cuda else 1)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for mb in [*args.reference_micro_batch, args.micro_batch, *(v.micro_batch for v in args.variants)]:
        if mb is not None and (mb < 1 or args.global_batch % mb):
            p.error(f"every micro-batch must divide --global-batch ({args.global_batch}), {mb} does not")
    if any(v.fp8 for v in args.variants):
        if not cuda:
            p.error("the fp8 variant needs a CUDA GPU (torchao Float8Linear)")
        if importlib.util.find_spec("torchao") is None:
            p.error("the fp8 variant needs torchao: pip install torchao")
    if args.steps < 1 or args.warmup < 0 or args.check_loss < 0:
        p.error("--steps must be >= 1, --warmup and --check-loss >= 0")
    return args


def benchmark_size(size: str, args: argparse.Namespace, setup: Setup, tokens: np.ndarray,
                   shards: ShardedTokens, peak: float | None) -> dict:
    """Every path of one size, from the same initial weights and data (see :func:`main`):
    ``tokens`` in memory for the reference, the same rows as ``shards`` on disk for ours."""
    device = setup.device
    cfg, lr = size_config(size, setup, args.config)
    torch.manual_seed(args.seed)
    init = GPT(cfg)
    n_params, flops_per_token = init.get_num_params(), init.flops_per_token(setup.seq - 1)
    init_state = init.state_dict()
    del init
    micro = args.micro_batch or auto_micro_batch(cfg, setup)
    refs, ours = [], []
    for mb in args.reference_micro_batch:
        _free(device)  # each path's peak memory is its own
        refs.append(measure(ReferencePath(cfg, init_state, tokens, lr, setup, mb), setup, flops_per_token, peak))
    for variant in args.variants:
        _free(device)
        ours.append(measure(OursPath(cfg, init_state, shards, lr, setup, micro, variant), setup, flops_per_token, peak))
    _free(device)
    best_ref = max(refs, key=lambda r: r.tokens_per_s)
    diff = (lambda r: loss_difference(refs[0].check_losses, r.check_losses)) if setup.check_loss else (lambda r: None)
    diffs = {r.path: diff(r) for r in ours}
    # The goals count a variant only if it learns what the reference learns (when the loss was checked).
    sound = [r for r in ours if diffs[r.path] is None or diffs[r.path] <= LOSS_TOLERANCE[setup.precision]]
    return dict(size=size, params=n_params, references=refs, variants=ours, reference=best_ref, ours=ours[0],
                best=max(sound, key=lambda r: r.tokens_per_s) if sound else None,
                speedup=ours[0].tokens_per_s / best_ref.tokens_per_s, loss_diff=diffs[ours[0].path], loss_diffs=diffs)


def print_size(row: dict, setup: Setup, width: int = 9) -> None:
    """The table rows of one size (references, then ours), its loss checks and memory estimates."""
    paths = row["references"] + row["variants"]
    cuda = setup.device.type == "cuda"
    for r in paths:
        first = r is paths[0]
        ratio = "" if r in row["references"] else f"{r.tokens_per_s / row['reference'].tokens_per_s:.2f}"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        est = _mem(r.estimate_bytes, setup.device) if r.estimate_bytes is not None else ""
        print(f"{row['size'] if first else '':>6} {_si(row['params']) if first else '':>8} {r.path:>{width}} "
              f"{f'{r.micro_batch} x {r.accum}':>13} {_si(r.tokens_per_s):>9} {r.images_per_s:>9,.1f} "
              f"{mfu:>6} {_mem(r.peak_mem_bytes, setup.device):>10} {est:>10} {ratio:>6}")
    ref0 = row["references"][0]
    for r in row["variants"]:
        diff = row["loss_diffs"][r.path]
        if diff is not None:
            tol = LOSS_TOLERANCE[setup.precision]
            print(f"{'':>6} loss check of {r.path}, {setup.check_loss} steps: {ref0.path} {ref0.check_losses[0]:.5f} "
                  f"-> {ref0.check_losses[-1]:.5f}, {r.path} {r.check_losses[0]:.5f} -> {r.check_losses[-1]:.5f}; "
                  f"max relative difference {diff:.1e} "
                  f"({'within' if diff <= tol else 'ABOVE'} the {setup.precision} tolerance {tol:.0e})")
        if cuda and r.estimate_bytes:
            off = r.peak_mem_bytes / r.estimate_bytes - 1
            print(f"{'':>6} memory of {r.path}: measured {_mem(r.peak_mem_bytes, setup.device)}, estimated "
                  f"{_mem(r.estimate_bytes, setup.device)} ({off:+.0%}; "
                  f"{'within' if abs(off) <= MEMORY_ESTIMATE_TOLERANCE else 'OUTSIDE'} "
                  f"{MEMORY_ESTIMATE_TOLERANCE:.0%})")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and print its table.

    Returns:
        One dict per size: ``size``, ``params``, ``references`` and ``variants`` (:class:`Result`
        lists), ``reference`` (the fastest reference), ``ours`` (the first variant), ``best`` (the
        fastest variant whose loss check passed, or that had none; None if none passed), ``speedup`` (ours / reference tokens/s), ``loss_diff`` (ours) and
        ``loss_diffs`` (by variant; None without ``--check-loss``).
    """
    args = parse_args(argv)
    device = torch.device(args.device)
    setup = Setup(device=device, bf16=device.type == "cuda", compile=args.compile,
                  global_batch=args.global_batch, seq=args.seq, patch_size=args.patch_size,
                  steps=args.steps, warmup=args.warmup, check_loss=args.check_loss)
    peak = peak_flops(device, args.peak_flops)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        print(f"device {device_name(device)}, torch {torch.__version__} with {args.threads} thread(s), "
              f"{setup.precision}, compile {'on' if setup.compile else 'off'}, "
              f"peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'}")
        print(f"global batch {setup.global_batch} galaxies x {setup.seq - 1} positions "
              f"({setup.global_batch * (setup.seq - 1):,} tokens of {args.patch_size**2 * setup.n_chan} values) "
              f"per step; {setup.warmup} warm-up + {setup.steps} timed steps"
              + (f"; loss check over {setup.check_loss} steps" if setup.check_loss else ""))
        print(f"reference: v1-style step, micro-batch {' / '.join(map(str, args.reference_micro_batch))}, "
              "blocking copy of each next batch; ours: astropt GPT, train.py's loop (pinned, non-blocking, no "
              "host sync)")
        tokens = synthetic_tokens(setup.global_batch, setup.seq, setup.patch_size, setup.n_chan, args.seed)
        width = max(9, *(len(v.name) for v in args.variants), *(len(f"reference@{m}") for m in args.reference_micro_batch))
        print(f"{'size':>6} {'params':>8} {'path':>{width}} {'micro x accum':>13} {'tokens/s':>9} "
              f"{'images/s':>9} {'MFU':>6} {'peak mem':>10} {'est mem':>10} {'x ref':>6}")
        rows = []
        with tempfile.TemporaryDirectory(prefix="astropt-train-bench-") as tmp:
            shards = token_shard(tokens, Path(tmp))
            for size in args.sizes:
                rows.append(benchmark_size(size, args, setup, tokens, shards, peak))
                print_size(rows[-1], setup, width)
    finally:
        torch.set_num_threads(threads_before)
    if device.type != "cuda":
        print("peak mem on the CPU: the process's peak resident set so far (it never decreases)")
    print_anchors(args.sizes, device)
    name = torch.cuda.get_device_name(device).upper() if device.type == "cuda" else ""
    print_goals(rows, device, "H100" in name or "H200" in name)
    return rows


if __name__ == "__main__":
    main()
