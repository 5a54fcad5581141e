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
   ``astropt/train.py``: raw uint8 patches gathered into pinned staging buffers by
   ``astropt.loader.BatchGatherer``, copied with ``non_blocking=True`` and normalised per patch
   on the device; the loss is accumulated on the device, so nothing in the step waits for
   the GPU. The step mirrors the training loop of ``astropt/train.py``.

Both steps clip gradients at 1.0 and use AdamW betas (0.9, 0.95), weight decay 0.1 and the
size's peak learning rate held constant. Every step trains on the same global batch of
synthetic galaxies (smooth blobs plus noise, patchified, per-patch normalised as the paper).

Printed per size and path: tokens/s (trained positions, ``T - 1`` per galaxy), images/s, MFU
(``GPT.flops_per_token(T - 1)`` x tokens/s / peak, peak from the GPU's name or
``--peak-flops``; "n/a" otherwise), peak memory (``torch.cuda.max_memory_allocated`` per path
on CUDA; on the CPU the process's peak resident set so far, which never decreases) and
ours / reference. ``--check-loss N`` first runs both steps for N steps and prints the largest
relative difference of the two loss curves: float32 on the CPU should agree to about 1e-5,
bf16 on a GPU to within bf16 noise (about 1e-2).

Run::

    PYTHONPATH=. python benchmarks/train_throughput.py                  # CPU: 42K, 416K
    PYTHONPATH=. python benchmarks/train_throughput.py --check-loss 20  # GPU: 21M 89M 309M
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

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
from astropt.patches import normalise  # noqa: E402

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

GOAL_SPEEDUP, GOAL_SIZES = 1.5, ("21M", "89M", "309M")
GOAL_MFU, GOAL_MFU_SIZE = 0.55, "309M"
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

    def __init__(self, cfg: GPTConfig, init_state: dict, tokens: np.ndarray, lr: float, setup: Setup):
        self.setup, self.lr, self.init_state = setup, lr, init_state
        self.micro_batch = V1_MICRO_BATCH
        self.accum = setup.global_batch // V1_MICRO_BATCH
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

    name = "ours"

    def __init__(self, cfg: GPTConfig, init_state: dict, tokens: np.ndarray, lr: float, setup: Setup,
                 micro_batch: int):
        self.setup, self.lr, self.init_state = setup, lr, init_state
        self.micro_batch, self.accum = micro_batch, setup.global_batch // micro_batch
        self.model = GPT(cfg).to(setup.device)
        self.step_model = torch.compile(self.model) if setup.compile else self.model
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
                _, loss = self.step_model(x[:, :-1], x[:, 1:])
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
    )


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


def print_goals(rows: list[dict], device: torch.device, on_h100: bool) -> None:
    """The GPU goal lines of the issue, judged when the run was on an H100."""
    print(f"goal: >= {GOAL_SPEEDUP}x reference tokens/s at {', '.join(GOAL_SIZES)}; "
          f">= {GOAL_MFU:.0%} MFU at {GOAL_MFU_SIZE}")
    if not on_h100:
        print(f"  not judged: the goals are for one H100, this run is on {device_name(device)}")
        return
    by_size = {r["size"]: r for r in rows}
    for size in GOAL_SIZES:
        r = by_size.get(size)
        verdict = "not measured" if r is None else (
            f"{r['speedup']:.2f}x: {'met' if r['speedup'] >= GOAL_SPEEDUP else 'NOT met'}")
        print(f"  {size} speed-up {verdict}")
    r = by_size.get(GOAL_MFU_SIZE)
    mfu = None if r is None else r["ours"].mfu
    verdict = "not measured" if mfu is None else f"{mfu:.1%}: {'met' if mfu >= GOAL_MFU else 'NOT met'}"
    print(f"  {GOAL_MFU_SIZE} MFU {verdict}")


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
    args = p.parse_args(argv)
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
    if args.global_batch % V1_MICRO_BATCH:
        p.error(f"--global-batch must be a multiple of v1's micro-batch ({V1_MICRO_BATCH})")
    if args.micro_batch is not None and (args.micro_batch < 1 or args.global_batch % args.micro_batch):
        p.error("--micro-batch must divide --global-batch")
    if args.steps < 1 or args.warmup < 0 or args.check_loss < 0:
        p.error("--steps must be >= 1, --warmup and --check-loss >= 0")
    return args


def benchmark_size(size: str, args: argparse.Namespace, setup: Setup, tokens: np.ndarray,
                   peak: float | None) -> dict:
    """Both paths of one size, from the same initial weights and data (see :func:`main`)."""
    device = setup.device
    cfg, lr = size_config(size, setup, args.config)
    torch.manual_seed(args.seed)
    init = GPT(cfg)
    n_params, flops_per_token = init.get_num_params(), init.flops_per_token(setup.seq - 1)
    init_state = init.state_dict()
    del init
    micro = args.micro_batch or auto_micro_batch(cfg, setup)
    _free(device)  # each path's peak memory is its own
    ref = measure(ReferencePath(cfg, init_state, tokens, lr, setup), setup, flops_per_token, peak)
    _free(device)
    ours = measure(OursPath(cfg, init_state, tokens, lr, setup, micro), setup, flops_per_token, peak)
    _free(device)
    return dict(size=size, params=n_params, reference=ref, ours=ours,
                speedup=ours.tokens_per_s / ref.tokens_per_s,
                loss_diff=loss_difference(ref.check_losses, ours.check_losses) if setup.check_loss else None)


def print_size(row: dict, setup: Setup) -> None:
    """Two table rows (reference, ours) and the loss check of one size."""
    ref, ours = row["reference"], row["ours"]
    for r in (ref, ours):
        first = r is ref
        ratio = "" if first else f"{row['speedup']:.2f}"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        print(f"{row['size'] if first else '':>6} {_si(row['params']) if first else '':>8} {r.path:>9} "
              f"{f'{r.micro_batch} x {r.accum}':>13} {_si(r.tokens_per_s):>9} {r.images_per_s:>9,.1f} "
              f"{mfu:>6} {_mem(r.peak_mem_bytes, setup.device):>10} {ratio:>6}")
    if row["loss_diff"] is not None:
        tol = LOSS_TOLERANCE[setup.precision]
        print(f"{'':>6} loss check, {setup.check_loss} steps: reference {ref.check_losses[0]:.5f} -> "
              f"{ref.check_losses[-1]:.5f}, ours {ours.check_losses[0]:.5f} -> {ours.check_losses[-1]:.5f}; "
              f"max relative difference {row['loss_diff']:.1e} "
              f"({'within' if row['loss_diff'] <= tol else 'ABOVE'} the {setup.precision} tolerance {tol:.0e})")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and print its table.

    Returns:
        One dict per size: ``size``, ``params``, ``reference`` and ``ours`` (:class:`Result`),
        ``speedup`` (ours / reference tokens/s) and ``loss_diff`` (None without ``--check-loss``).
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
        print(f"reference: v1-style step, micro-batch {V1_MICRO_BATCH}, blocking copy of each next batch; "
              "ours: astropt GPT, train.py's loop (pinned, non-blocking, no host sync)")
        tokens = synthetic_tokens(setup.global_batch, setup.seq, setup.patch_size, setup.n_chan, args.seed)
        print(f"{'size':>6} {'params':>8} {'path':>9} {'micro x accum':>13} {'tokens/s':>9} "
              f"{'images/s':>9} {'MFU':>6} {'peak mem':>10} {'x ref':>6}")
        rows = []
        for size in args.sizes:
            rows.append(benchmark_size(size, args, setup, tokens, peak))
            print_size(rows[-1], setup)
    finally:
        torch.set_num_threads(threads_before)
    if device.type != "cuda":
        print("peak mem on the CPU: the process's peak resident set so far (it never decreases)")
    print_anchors(args.sizes, device)
    on_h100 = device.type == "cuda" and "H100" in torch.cuda.get_device_name(device).upper()
    print_goals(rows, device, on_h100)
    return rows


if __name__ == "__main__":
    main()
