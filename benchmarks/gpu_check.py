"""GPU check of the training path (CI has no GPU): bf16, torch.compile, fused AdamW, embed.

1. Trains a tiny model on micro synthetic data on CUDA in float32, bf16 autocast, and bf16 +
   torch.compile, and prints the validation-loss curves side by side (they should agree to
   within bf16 noise, a few per cent).
2. Embeds the test split on the GPU.
3. Times this project's training step for paper presets at T = 1023 (random patches),
   bf16 autocast + compile + fused AdamW, and prints tokens/s and MFU
   (MFU = flops_per_token x tokens/s / 989 TFLOP/s, the H100's dense bf16 peak).

Run (on a machine with a CUDA GPU):
    PYTHONPATH=. python benchmarks/gpu_check.py --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from astropt.config import SizeSpec, TrainConfig
from astropt.embed import embed_split, read_embeddings
from astropt.model import GPT, PRESETS
from astropt.synthetic import SyntheticConfig, generate
from astropt.tokenise import TokeniseSettings, merge_token_groups, tokenise_group
from astropt.train import train

PEAK_FLOPS = 989e12  # H100 SXM dense bf16


def correctness(out: Path, steps: int = 300) -> None:
    meta = generate(out / "galaxies", SyntheticConfig(n_train=2048, n_val=256, n_test=512, workers=8), log=lambda *a: None)
    for split in ("train", "validation", "test"):
        tokenise_group(meta[meta["split"] == split], out / "galaxies", out / split, TokeniseSettings(8, 64), workers=8,
                       log=lambda *a: None)
        merge_token_groups(out / split, 1, log=lambda *a: None)
    from astropt.model import GPTConfig

    spec = SizeSpec("416K", GPTConfig(n_layer=3, n_head=4, n_embd=96, patch_size=8, block_size=64), 3e-3)
    base = TrainConfig(steps=steps, micro_batch=32, warmup_steps=30, eval_interval=steps // 6, eval_galaxies=256,
                       log_interval=steps // 6, checkpoint_interval=steps, device="cuda", threads=4)
    curves = {}
    for name, cfg in {
        "fp32": dataclasses.replace(base, dtype="float32"),
        "fp32 seed 1": dataclasses.replace(base, dtype="float32", seed=1),  # seed-to-seed spread
        "bf16": dataclasses.replace(base, dtype="bfloat16"),
        "bf16 seed 1": dataclasses.replace(base, dtype="bfloat16", seed=1),
        "bf16+compile": dataclasses.replace(base, dtype="bfloat16", compile=True),
    }.items():
        t0 = time.perf_counter()
        m = train(spec, cfg, out / "train", out / "validation", out / name.replace(" ", "_"), log=lambda *a: None)
        curves[name] = m["val_loss"].dropna().to_numpy()
        print(f"{name:>14}: val loss {np.array2string(curves[name], precision=5)}  ({time.perf_counter() - t0:.1f} s)")
    for name in curves:
        print(f"final val loss {name} vs fp32: {curves[name][-1] / curves['fp32'][-1] - 1:+.2%}")
    embed_split(out / "bf16+compile" / "ckpt.pt", out / "test", out / "emb.parquet", n_tokens=64, log=lambda *a: None)
    ids, X = read_embeddings(out / "emb.parquet")
    print(f"embeddings on GPU: {X.shape}, finite: {np.isfinite(X).all()}")


def _step(model, cmodel, opt, x) -> None:
    """One bf16 training step of the compiled model ``cmodel`` (of ``model``) on the batch ``x``."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = cmodel(x[:, :-1], x[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def throughput(sizes: list[str], batches: list[int], steps: int = 20) -> None:
    dev = torch.device("cuda")
    print(f"{'size':>6} {'batch':>5} {'tokens/s':>12} {'MFU':>6} {'peak GiB':>9}")
    for size in sizes:
        for B in batches:
            torch.manual_seed(0)
            model = GPT(PRESETS[size]).to(dev)
            opt = model.configure_optimizer(0.1, 3e-4, (0.9, 0.95), "cuda")
            cmodel = torch.compile(model)
            T = model.config.block_size
            x = torch.randn(B, T, model.config.input_dim, device=dev)
            torch.cuda.reset_peak_memory_stats()
            for _ in range(5):
                _step(model, cmodel, opt, x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                _step(model, cmodel, opt, x)
            torch.cuda.synchronize()
            tok_s = steps * B * (T - 1) / (time.perf_counter() - t0)
            mfu = model.flops_per_token(T - 1) * tok_s / PEAK_FLOPS
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"{size:>6} {B:>5} {tok_s:>12,.0f} {mfu:>6.1%} {peak:>9.1f}")
            del model, opt, cmodel
            torch.cuda.empty_cache()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    p.add_argument("--sizes", nargs="*", default=["21M", "89M", "309M"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--steps", type=int, default=300, help="training steps of the precision check")
    args = p.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    correctness(args.out, args.steps)
    if args.sizes:
        throughput(args.sizes, args.batches)
