"""Tests for astropt.checkpoint: atomic saves, safe loads, v1 compatibility.

Run: cd /work/main && /tmp/venvtest/.venv/bin/python -m pytest tests/test_checkpoint.py -q
"""

import os

import pytest
import torch

from astropt.checkpoint import clean_state_dict, load_checkpoint, load_model, save_checkpoint
from astropt.model import GPT, GPTConfig


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_chan=3, patch_size=4, block_size=16)
    return GPT(cfg).eval()


def _outputs(model: GPT) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(2, 10, model.config.input_dim, generator=g)
    with torch.no_grad():
        return model(x)[0]


def _state(model: GPT) -> dict:
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    x = torch.randn(1, 4, model.config.input_dim)
    model(x, targets=x)[1].backward()
    opt.step()  # populate the optimizer state
    return {
        "model": model.state_dict(),
        "model_args": model.config.to_dict(),
        "optimizer": opt.state_dict(),
        "iter_num": 7,
        "best_val_loss": 0.25,
        "config": {"batch_size": 8, "learning_rate": 1e-3, "betas": [0.9, 0.95], "name": "tiny"},
        "rng": {"torch": torch.get_rng_state()},
        "metrics": [{"iter": 7, "val_loss": 0.25}],
    }


def test_round_trip(tmp_path, tiny_model):
    path = tmp_path / "sub" / "dir" / "ckpt.pt"  # parents are created
    state = _state(tiny_model)
    save_checkpoint(path, state)
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == tiny_model.config
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny_model.eval()))
    ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 7 and ckpt["config"]["name"] == "tiny"
    assert ckpt["metrics"] == state["metrics"]
    assert os.listdir(path.parent) == ["ckpt.pt"]


@pytest.mark.parametrize("meta_above", [0, 10**9])  # built on the meta device / on the CPU
def test_both_builds_load_the_same_model(tmp_path, tiny_model, monkeypatch, meta_above):
    monkeypatch.setattr("astropt.checkpoint.META_BUILD_ABOVE", meta_above)
    save_checkpoint(tmp_path / "ckpt.pt", _state(tiny_model))
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    loaded = load_model(tmp_path / "ckpt.pt")
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny_model.eval()))
    assert all(p.device.type == "cpu" for p in loaded.parameters())  # nothing left on meta
    torch.testing.assert_close(torch.rand(3), expected_draw)  # the caller's RNG is untouched


def test_failed_save_keeps_old_file(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state(tiny_model))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {}})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt.pt", {"x": 1})
    assert os.listdir(tmp_path) == []


def test_loads_v1_checkpoint(tmp_path, tiny_model):
    """A file as AstroPT v1's train.py writes it: compiled-model keys, plain torch.save."""
    cfg = tiny_model.config
    opt = tiny_model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    v1 = {
        "model": {f"_orig_mod.{k}": v for k, v in tiny_model.state_dict().items()},
        "model_args": dict(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_chan=cfg.n_chan,
            block_size=cfg.block_size, dropout=0.0, patch_size=cfg.patch_size, bias=False,
        ),  # fmt: skip
        "optimizer": opt.state_dict(),
        "iter_num": 30000,
        "best_val_loss": torch.tensor(0.3141),
        "config": {"out_dir": "logs/astropt", "batch_size": 8, "compile": True, "dtype": "bf16"},
    }
    path = tmp_path / "030000_ckpt.pt"
    torch.save(v1, path)
    loaded = load_model(path)
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny_model))


def test_extra_model_args_ignored(tmp_path, tiny_model):
    args = tiny_model.config.to_dict() | {"attn_type": "causal", "vocab_size": None}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": tiny_model.state_dict(), "model_args": args})
    torch.testing.assert_close(_outputs(load_model(path)), _outputs(tiny_model))


def test_clean_state_dict():
    sd = {
        "_orig_mod.lm_head.0.weight": 1,
        "module._orig_mod.transformer.wpe.weight": 2,
        "_orig_mod.module.transformer.ln_f.weight": 3,
        "lm_head.4.bias": 4,
        "transformer.h.0.module.x": 5,  # only leading prefixes are stripped
    }
    assert clean_state_dict(sd) == {
        "lm_head.0.weight": 1,
        "transformer.wpe.weight": 2,
        "transformer.ln_f.weight": 3,
        "lm_head.4.bias": 4,
        "transformer.h.0.module.x": 5,
    }


PAYLOAD_RAN = []


def _payload():
    PAYLOAD_RAN.append(True)


class Exploit:
    """Unpickling this calls _payload (a stand-in for os.system)."""

    def __reduce__(self):
        return (_payload, ())


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {}, "x": Exploit()}, path)
    with pytest.raises(ValueError, match="not a readable AstroPT checkpoint") as err:
        load_checkpoint(path)
    assert "evil.pt" in str(err.value)
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(path)
    assert PAYLOAD_RAN == []


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt.*not a readable AstroPT checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "ckpt.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=str(path).replace("\\", "\\\\")):
        load_model(path)


def test_missing_model_args(tmp_path, tiny_model):
    path = tmp_path / "weights_only.pt"
    save_checkpoint(path, {"model": tiny_model.state_dict()})
    with pytest.raises(ValueError, match="weights_only.pt.*model_args"):
        load_model(path)


def test_mismatched_weights(tmp_path, tiny_model):
    path = tmp_path / "ckpt.pt"
    args = tiny_model.config.to_dict() | {"n_layer": 3}
    save_checkpoint(path, {"model": tiny_model.state_dict(), "model_args": args})
    with pytest.raises(ValueError, match="don't match"):
        load_model(path)
