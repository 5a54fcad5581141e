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


@pytest.mark.parametrize("name", list(PRESETS))
def test_counts_match_the_paper_presets(name):
    cfg = PRESETS[name]
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
