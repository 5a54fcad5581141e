"""Fast checks of benchmarks/train_throughput.py and its v1-style reference (benchmarks/_v1_model.py).

The comparison is like for like only if the reference is the same network as
``astropt.model.GPT``: same parameters (names, shapes, count) and, given the same weights, the
same outputs. The script then runs end to end on the CPU at a tiny size, and its two
training steps, started from the same weights on the same data, give the same loss curve in
float32.

Run: python -m pytest tests/test_train_throughput.py -q
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from astropt.model import GPT, PRESETS, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
FLOAT32_LOSS_TOLERANCE = 1e-4  # max relative difference of the two loss curves


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("train_throughput")
v1 = sys.modules["_v1_model"]  # the reference the script imported


def _v1_like(cfg: GPTConfig) -> torch.nn.Module:
    return v1.V1GPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.input_dim)


@pytest.mark.parametrize(
    "cfg",
    [
        GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=64),  # 42K
        GPTConfig(n_layer=3, n_head=4, n_embd=96, patch_size=8, block_size=64),  # 416K
        PRESETS["21M"],
        PRESETS["89M"],
        PRESETS["309M"],
    ],
    ids=["42K", "416K", "21M", "89M", "309M"],
)
def test_v1_model_has_the_projects_parameters(cfg):
    with torch.device("meta"):  # no memory, no init cost
        ours, ref = GPT(cfg), _v1_like(cfg)
    assert ref.get_num_params() == ours.get_num_params()
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ref) == shapes(ours)


def test_v1_paper_sizes_match_the_facts_table():
    with torch.device("meta"):
        counts = {s: _v1_like(PRESETS[s]).get_num_params() for s in ("21M", "89M", "309M")}
    assert round(counts["21M"] / 1e6, 2) == 20.98
    assert round(counts["89M"] / 1e6, 2) == 89.09
    assert round(counts["309M"] / 1e6, 2) == 308.86


def test_v1_model_computes_what_ours_computes():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=4, block_size=16)
    torch.manual_seed(0)
    ours = GPT(cfg)
    ref = _v1_like(cfg)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 16, cfg.input_dim)
    pred_ours, loss_ours = ours(x[:, :-1], x[:, 1:])
    pred_ref, loss_ref = ref(x[:, :-1], x[:, 1:])
    torch.testing.assert_close(pred_ref, pred_ours, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_ref, loss_ours, rtol=1e-6, atol=0)


def test_v1_patch_normalise_matches_the_projects():
    from astropt.patches import normalise

    raw = torch.randint(0, 256, (2, 5, 48), dtype=torch.uint8)
    torch.testing.assert_close(v1.v1_patch_normalise(raw), normalise(raw, "patch"))


def _printed_tokens_per_s(out: str) -> dict[str, float]:
    """tokens/s of each path as printed in the table ("12.3k" -> 12300)."""
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    found = {}
    for line in out.splitlines():
        words = line.split()
        for path in ("reference", "ours"):
            if path in words and "x" in words:  # a table row: path, micro, "x", accum, tokens/s, ...
                value = words[words.index(path) + 4]
                found[path] = float(value[:-1]) * scale[value[-1]] if value[-1] in scale else float(value)
    return found


def test_script_on_cpu_prints_both_paths_and_the_loss_curves_agree(capsys):
    rows = bench.main(["--device", "cpu", "--sizes", "42K", "--seq", "16", "--global-batch", "32",
                       "--micro-batch", "16", "--steps", "2", "--warmup", "1", "--check-loss", "4"])
    out = capsys.readouterr().out
    assert [r["size"] for r in rows] == ["42K"]
    row = rows[0]
    ref, ours = row["reference"], row["ours"]
    # Both accumulate, over different splits of the same 32 galaxies.
    assert (ref.micro_batch, ref.accum) == (8, 4) and (ours.micro_batch, ours.accum) == (16, 2)
    assert ref.tokens_per_s > 0 and ours.tokens_per_s > 0
    assert ref.images_per_s == pytest.approx(ref.tokens_per_s / 15)
    assert ref.mfu is None and ours.mfu is None  # CPU, no --peak-flops
    assert row["speedup"] == pytest.approx(ours.tokens_per_s / ref.tokens_per_s)
    # Same weights, same data, float32: the loss curves agree.
    assert len(ref.check_losses) == 4 and ref.check_losses[-1] < ref.check_losses[0]
    assert row["loss_diff"] < FLOAT32_LOSS_TOLERANCE
    printed = _printed_tokens_per_s(out)
    assert set(printed) == {"reference", "ours"} and min(printed.values()) > 0
    assert "within the float32 tolerance" in out
    assert ("goals: >= 1.5x the reference's best tokens/s at 21M; >= 1.3x the reference's best tokens/s at 89M; "
            ">= 55% MFU at 309M") in out
    assert "not judged" in out
    assert ours.estimate_bytes > 0 and ref.estimate_bytes is None  # memory_estimate beside ours


def test_variants_and_reference_micro_batches_each_get_a_row(capsys):
    """--variants: padded positions and activation checkpointing learn what ours learns (float32);
    --reference-micro-batch: the speed-ups are against the fastest reference."""
    rows = bench.main(["--device", "cpu", "--sizes", "42K", "--seq", "16", "--global-batch", "32",
                       "--micro-batch", "16", "--steps", "1", "--warmup", "0", "--check-loss", "3",
                       "--reference-micro-batch", "8", "16", "--variants", "ours", "ours+pad+ac", "ours+mb=32"])
    out = capsys.readouterr().out
    row = rows[0]
    assert [r.path for r in row["references"]] == ["reference", "reference@16"]
    assert [(r.path, r.micro_batch) for r in row["variants"]] == [("ours", 16), ("ours+pad+ac", 16), ("ours+mb=32", 32)]
    assert row["reference"] is max(row["references"], key=lambda r: r.tokens_per_s)
    assert all(d < FLOAT32_LOSS_TOLERANCE for d in row["loss_diffs"].values())
    assert "loss check of ours+pad+ac" in out
    padded = row["variants"][1]
    assert padded.estimate_bytes < row["variants"][0].estimate_bytes  # checkpointing keeps fewer activations
    for bad in (["--variants", "theirs"], ["--variants", "ours+turbo"], ["--variants", "ours+mb=3"],
                ["--device", "cpu", "--variants", "ours+fp8"]):
        with pytest.raises(SystemExit):
            bench.parse_args(["--device", "cpu", "--global-batch", "32", *bad])


def test_auto_micro_batch_on_cpu_is_the_largest_power_of_two_dividing_the_batch():
    setup = bench.Setup(device=torch.device("cpu"), bf16=False, compile=False, global_batch=40, seq=16,
                        patch_size=8, steps=1, warmup=0, check_loss=0)
    assert bench.auto_micro_batch(GPTConfig(n_layer=1, n_head=1, n_embd=8, patch_size=8, block_size=16),
                                  setup) == 8


def test_peak_flops_needs_a_known_gpu_or_an_override():
    assert bench.peak_flops(torch.device("cpu"), None) is None
    assert bench.peak_flops(torch.device("cpu"), 1e12) == 1e12


def test_bad_global_batch_is_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--global-batch", "12"])
