"""astropt.compute: the torch-free parameter and FLOP counts match the model; costs and the
CPU refusal.

Run: python -m pytest tests/test_compute.py -q
"""

import itertools

import pytest
import torch

from astropt.compute import CPU_FLOPS_PER_THREAD, cpu_refusal, flops_per_token, param_count, run_cost
from astropt.model import PRESETS, GPT, GPTConfig


def _model(cfg: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(cfg)


@pytest.mark.parametrize(
    "n_layer, n_embd, patch, n_chan, bias",
    list(itertools.product([1, 3], [32, 48], [4, 8], [1, 3], [False, True])),
)
def test_counts_match_the_model(n_layer, n_embd, patch, n_chan, bias):
    cfg = GPTConfig(n_layer=n_layer, n_head=4, n_embd=n_embd, patch_size=patch, n_chan=n_chan,
                    block_size=20, bias=bias)
    model, args = _model(cfg), cfg.to_dict()
    assert param_count(args) == model.get_num_params()
    assert param_count(args, non_embedding=False) == model.get_num_params(non_embedding=False)
    assert flops_per_token(args, 19) == model.flops_per_token(19)


@pytest.mark.parametrize("name", [*PRESETS, "6.5B"])
def test_counts_match_the_presets(name):
    from astropt.compute import SIZE_PRESETS

    cfg = SIZE_PRESETS[name]
    assert param_count(cfg.to_dict()) == _model(cfg).get_num_params()


def test_run_cost_arithmetic():
    args = GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=64).to_dict()
    cost = run_cost(args, steps=800, global_batch=16, mfu=0.5, peak_tflops=100.0, threads=2)
    assert cost.tokens == 800 * 16 * 63
    assert cost.flops == flops_per_token(args, 63) * cost.tokens
    assert cost.gpu_hours == pytest.approx(cost.flops / (0.5 * 100e12) / 3600)
    assert cost.cpu_hours == pytest.approx(cost.flops / (2 * CPU_FLOPS_PER_THREAD) / 3600)
    assert "FLOPs" in cost.describe() and "2 CPU thread(s)" in cost.describe()


def test_cpu_refusal_names_the_way_out():
    args = PRESETS["309M"].to_dict()
    cost = run_cost(args, steps=800, global_batch=16)  # the default's schedule: ~1.5e15 FLOPs
    assert cost.cpu_hours > 1
    why = cpu_refusal("309M", cost, limit_hours=1.0)
    assert "309M" in why and "--configfile=config/paper.yaml" in why and "max_cpu_hours" in why
    assert cpu_refusal("309M", cost, limit_hours=None) is None  # no limit
    assert cpu_refusal("309M", cost, limit_hours=cost.cpu_hours * 2) is None


# --------------------------------------------------------------------------- GPU memory

from astropt.compute import (  # noqa: E402
    GIB, LARGE_PRESETS, SIZE_PRESETS, memory_estimate, memory_refusal,
)


def test_memory_estimate_of_a_small_model_by_hand():
    """2 layers x 64 wide, 4 heads, 4 px patches of 3 bands (D = 48), 16 positions, micro-batch 8."""
    args = GPTConfig(n_layer=2, n_head=4, n_embd=64, patch_size=4, block_size=16).to_dict()
    # parameters: tokeniser 48*64+64 + 64*64+64 = 7,296; a block 2*64 (LayerNorms) + 12*64*64 =
    # 49,280; final LayerNorm 64; head 64*128+128 + 128*64+64 + 64*48+48 = 19,696; positions 16*64
    n = 7_296 + 2 * 49_280 + 64 + 19_696 + 16 * 64
    assert param_count(args, non_embedding=False) == n
    bf16 = memory_estimate(args, 8)
    assert (bf16.weights, bf16.grads, bf16.optimizer, bf16.unsharded) == (4 * n, 4 * n, 8 * n, 0)
    # bf16 copies of the Linear weights: the blocks' 2 * 12 * 64^2 and 48*64 + 64^2 + 4*64^2 + 64*48
    assert bf16.weight_copies == 2 * (2 * 12 * 64 * 64 + 48 * 64 + 64 * 64 + 4 * 64 * 64 + 64 * 48)
    # per token: 2 blocks x (36 * 64 + 16 + 4 * 4) + (16 * 64 + 6 * 48); the batch 8 x 16 x 4 * 48
    assert bf16.activations == 8 * 15 * (2 * (36 * 64 + 32) + 16 * 64 + 6 * 48) + 8 * 16 * 4 * 48
    fp32 = memory_estimate(args, 8, dtype="float32", pad_positions=True)
    assert fp32.weight_copies == 0
    assert fp32.activations == 8 * 16 * (2 * (64 * 64 + 32) + 28 * 64 + 8 * 48) + 8 * 17 * 4 * 48
    ckpt = memory_estimate(args, 8, checkpointing=True)  # one fp32 residual per block, one block live
    assert ckpt.activations == 8 * 15 * (2 * 4 * 64 + 36 * 64 + 32 + 16 * 64 + 6 * 48) + 8 * 16 * 4 * 48
    # FSDP on 4 ranks: the states / 4, plus 3 blocks' and 2 roots' fp32 weights (root: the rest)
    fsdp = memory_estimate(args, 8, parallel="fsdp", ranks=4)
    assert fsdp.weights == n and fsdp.optimizer == 2 * n
    assert fsdp.unsharded == 4 * (3 * 49_280 + 2 * (n - 2 * 49_280))


# GB (2**30 bytes) per GPU of the paper's configurations (config/paper.yaml: bf16, micro-batch 32
# for the small sizes, 20 for 89M-830M, 10 for 2100M; DDP) and of 6.5B, worked out separately
# (a few lines of arithmetic over the terms above, not this module).
@pytest.mark.parametrize("size, micro_batch, parallel, ranks, checkpointing, gb", [
    ("21M", 32, "ddp", 1, False, 4.22),
    ("89M", 20, "ddp", 4, False, 8.22),
    ("309M", 20, "ddp", 8, False, 22.55),
    ("2100M", 10, "ddp", 16, False, 58.26),
    ("2100M", 10, "fsdp", 16, False, 30.32),
    ("6.5B", 10, "ddp", 16, False, 155.28),
    ("6.5B", 10, "fsdp", 16, True, 16.31),
])
def test_memory_estimate_table(size, micro_batch, parallel, ranks, checkpointing, gb):
    est = memory_estimate(SIZE_PRESETS[size].to_dict(), micro_batch, parallel=parallel, ranks=ranks,
                          checkpointing=checkpointing)
    assert est.total_gb == pytest.approx(gb, abs=0.01)


def _saved_for_backward(cfg: GPTConfig, batch: int, bf16: bool) -> int:
    """Bytes of the tensors autograd saves in one forward (parameters and the batch excluded)."""
    import contextlib

    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randn(batch, cfg.block_size, cfg.input_dim)
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x[:, :-1], x[:, 1:])
    return sum(saved.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("n_layer, n_head, n_embd", [(1, 4, 64), (3, 8, 128)])
def test_activation_term_matches_what_autograd_saves(dtype, n_layer, n_head, n_embd):
    """The estimate's activations (less the batch) and bf16 weight copies against the bytes
    autograd really keeps for backward on this CPU (flash attention, as on a GPU)."""
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, patch_size=4, block_size=128)
    est = memory_estimate(cfg.to_dict(), 4, dtype=dtype)
    batch = 4 * 128 * 4 * cfg.input_dim
    measured = _saved_for_backward(cfg, 4, dtype == "bfloat16")
    assert est.activations - batch + est.weight_copies == pytest.approx(measured, rel=0.02)


def test_memory_refusal_names_the_size_and_what_fits():
    args = LARGE_PRESETS["6.5B"].to_dict()
    why = memory_refusal("6.5B", args, 10, 32, parallel="ddp", dtype="bfloat16", ranks=16,
                         checkpointing=False, pad_positions=False, gpu_mem_gb=80)
    assert why.startswith("size 6.5B needs about 155.3 GB")
    assert "train.sizes.6.5B.parallel: fsdp" in why and "gpu_mem_gb" in why
    assert ".micro_batch: " not in why  # 16 bytes a parameter: no micro-batch fits under DDP
    assert memory_refusal("6.5B", args, 10, 32, parallel="fsdp", dtype="bfloat16", ranks=16,
                          checkpointing=True, pad_positions=False, gpu_mem_gb=80) is None
    small = memory_refusal("309M", SIZE_PRESETS["309M"].to_dict(), 64, 5, parallel="ddp", dtype="bfloat16",
                           ranks=1, checkpointing=False, pad_positions=False, gpu_mem_gb=24)
    assert "train.sizes.309M.micro_batch: 16 with grad_accum: 20 (the same global batch of 320" in small
    assert "activation_checkpointing: true" in small
    # a suggested micro-batch splits the global batch evenly over the ranks (320 / 8 ranks: 40, not 18)
    eight = memory_refusal("309M", SIZE_PRESETS["309M"].to_dict(), 64, 5, parallel="ddp", dtype="bfloat16",
                           ranks=8, checkpointing=True, pad_positions=False, gpu_mem_gb=12)
    assert "train.sizes.309M.micro_batch: 40 with grad_accum: 8 " in eight
    # and suggested GPUs divide the accumulation (grad_accum 10: not 4 GPUs at micro-batch 32)
    ten = memory_refusal("6.5B", args, 32, 10, parallel="ddp", dtype="bfloat16", ranks=1,
                         checkpointing=False, pad_positions=False, gpu_mem_gb=80)
    assert "on 2 GPUs (resources.train.sizes.6.5B) and train.sizes.6.5B.micro_batch: 1 with grad_accum: 320" in ten
    one = memory_refusal("6.5B", args, 10, 32, parallel="ddp", dtype="bfloat16", ranks=1,
                         checkpointing=False, pad_positions=False, gpu_mem_gb=24)
    assert "fsdp with activation_checkpointing: true on 16 GPUs (resources.train.sizes.6.5B)" in one
    tiny = memory_refusal("6.5B", args, 10, 32, parallel="ddp", dtype="bfloat16", ranks=1,
                          checkpointing=False, pad_positions=False, gpu_mem_gb=8)
    assert "on 32 GPUs (resources.train.sizes.6.5B) and train.sizes.6.5B.micro_batch: 1" in tiny
    assert memory_estimate(args, 1).total / GIB > 80  # and DDP never fits an 80 GB card


# Peak memory measured on one NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130) by benchmarks/gpu_check.py:
# one GPU, bf16 autocast, torch.compile, fused AdamW, T = 1023, no accumulation; the README's
# "On a GPU" table (GiB, torch.cuda.max_memory_allocated).
H100_PEAK_GIB = {("21M", 8): 1.3, ("21M", 32): 4.3, ("89M", 8): 4.0, ("89M", 32): 12.1,
                 ("309M", 8): 11.1, ("309M", 32): 32.0}


@pytest.mark.parametrize("size, micro_batch", list(H100_PEAK_GIB))
def test_memory_estimate_against_measured_h100_peaks(size, micro_batch):
    est = memory_estimate(PRESETS[size].to_dict(), micro_batch)
    assert est.total_gb == pytest.approx(H100_PEAK_GIB[size, micro_batch], rel=0.15)
