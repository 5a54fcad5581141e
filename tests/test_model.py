"""Tests for astropt.model (the AstroPT v1 GPT).

Run: cd /work/main && /tmp/venvtest/.venv/bin/python -m pytest tests/test_model.py -q
"""

import math

import pytest
import torch

from astropt.model import GPT, PRESET_LR, PRESETS, GPTConfig


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig(n_layer=2, n_head=2, n_embd=32, n_chan=3, patch_size=4, block_size=16)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny ops gain nothing from more, and stay fast on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# (preset, expected size in M, decimals the paper quotes)
PAPER_COUNTS = [
    ("1M", 1.1, 1),
    ("5M", 5.4, 1),
    ("12M", 12.0, 1),
    ("21M", 20.98, 2),
    ("89M", 89.09, 2),
    ("309M", 308.86, 2),
    ("830M", 829.5, 1),
    ("2100M", 2082, 0),
]


@pytest.mark.parametrize("name,expected,decimals", PAPER_COUNTS)
def test_preset_param_counts_match_paper(name, expected, decimals):
    with torch.device("meta"):
        model = GPT(PRESETS[name])
    assert round(model.get_num_params() / 1e6, decimals) == expected


def test_presets_shape_and_lr():
    from astropt.compute import SIZE_PRESETS, param_count
    from astropt.config import parse_size_name

    assert set(SIZE_PRESETS) == set(PRESET_LR) and set(PRESETS) < set(SIZE_PRESETS)
    for name, cfg in SIZE_PRESETS.items():
        assert (cfg.n_chan, cfg.patch_size, cfg.block_size, cfg.input_dim) == (3, 16, 1024, 768)
        if name not in PRESETS:  # beyond the paper: named by its parameter count
            assert param_count(cfg.to_dict()) == pytest.approx(parse_size_name(name), rel=0.01)
    assert PRESET_LR["89M"] == 6e-4 and PRESET_LR["2100M"] == 1.6e-4


def test_num_params_real_model(tiny_model):
    total = sum(p.numel() for p in tiny_model.parameters())
    wpe = tiny_model.transformer.wpe.weight.numel()
    assert tiny_model.get_num_params() == total - wpe
    assert tiny_model.get_num_params(non_embedding=False) == total


def test_flops_per_token(tiny_model, tiny_config):
    n = tiny_model.get_num_params()
    assert tiny_model.flops_per_token(15) == 6 * n + 12 * 2 * 32 * 15


def test_state_dict_names_match_v1(tiny_model):
    keys = set(tiny_model.state_dict())
    expected = {
        "transformer.wte.0.weight", "transformer.wte.0.bias",
        "transformer.wte.2.weight", "transformer.wte.2.bias",
        "transformer.wpe.weight", "transformer.ln_f.weight",
        "lm_head.0.weight", "lm_head.0.bias", "lm_head.2.weight", "lm_head.2.bias",
        "lm_head.4.weight", "lm_head.4.bias",
    }  # fmt: skip
    for i in range(2):
        for name in ("ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight",
                     "ln_2.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):  # fmt: skip
            expected.add(f"transformer.h.{i}.{name}")
    assert keys == expected


def test_init_scales():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8, n_head=4, n_embd=128, patch_size=4, block_size=16)
    model = GPT(cfg)
    std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    proj_std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert torch.all(model.lm_head[0].bias == 0)


def test_config_dict_round_trip_and_validation(tiny_config):
    d = tiny_config.to_dict()
    assert GPTConfig.from_dict(d) == tiny_config
    # unknown keys ignored, missing keys take defaults
    cfg = GPTConfig.from_dict({"n_layer": 3, "n_head": 2, "n_embd": 8, "vocab_size": 99})
    assert cfg.n_layer == 3 and cfg.patch_size == 16
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_head=5, n_embd=32)


def test_shapes(tiny_model, tiny_config):
    x = torch.randn(3, 10, tiny_config.input_dim)
    pred, loss = tiny_model(x)
    assert pred.shape == (3, 10, 48) and loss is None
    assert tiny_model.forward_features(x).shape == (3, 10, 32)
    pred, loss = tiny_model(x, targets=torch.randn_like(x))
    assert loss.dim() == 0 and torch.isfinite(loss)
    # forward is the head applied to forward_features
    h = tiny_model.forward_features(x)
    torch.testing.assert_close(pred, tiny_model.lm_head(tiny_model.transformer.ln_f(h)))


def test_readable_errors(tiny_model):
    with pytest.raises(ValueError, match=r"sequence length \(17\) exceeds .*block_size \(16\)"):
        tiny_model(torch.randn(1, 17, 48))
    with pytest.raises(ValueError, match=r"Input patch size \(47\) doesn't match model \(48"):
        tiny_model(torch.randn(1, 4, 47))


def test_causality(tiny_model):
    torch.manual_seed(1)
    x = torch.randn(2, 12, 48)
    t = 7
    x2 = x.clone()
    x2[:, t] = torch.randn(2, 48)
    with torch.no_grad():
        a, _ = tiny_model(x)
        b, _ = tiny_model(x2)
    torch.testing.assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_gradients_reach_all_parameters(tiny_model):
    x = torch.randn(2, 8, 48)
    _, loss = tiny_model.train()(x, targets=torch.randn_like(x))
    loss.backward()
    for name, p in tiny_model.named_parameters():
        if name == "transformer.wpe.weight":
            assert p.grad[:8].abs().sum() > 0 and p.grad[8:].abs().sum() == 0
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_overfits_one_batch(tiny_config, one_thread):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    seq = torch.randn(2, 16, tiny_config.input_dim)  # random patches: pure memorisation
    x, y = seq[:, :-1], seq[:, 1:]
    opt = model.configure_optimizer(0.0, 3e-3, (0.9, 0.95), "cpu")
    model.train()
    _, loss = model(x, targets=y)
    initial = loss.item()
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, targets=y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * initial, (initial, loss.item())


def test_weight_decay_groups(tiny_model):
    opt = tiny_model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in tiny_model.parameters())
    assert opt.defaults["betas"] == (0.9, 0.95)
