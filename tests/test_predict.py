"""Next-patch predictions in pixel units (astropt.predict) and their figure.

Run: python -m pytest tests/test_predict.py -q
"""

import numpy as np
import pytest
import torch

from astropt import pipeline
from astropt.checkpoint import save_checkpoint
from astropt.embed import transpose_index, transpose_tokens
from astropt.model import GPT, GPTConfig
from astropt.predict import next_patch_predictions, plot_predictions
from astropt.tokenise import load_tokens, normalise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = GPTConfig(n_layer=1, n_head=1, n_embd=8, n_chan=3, patch_size=4, block_size=15)  # 16 tokens of 48


class Oracle(torch.nn.Module):
    """A stand-in model that predicts exactly the next normalised patch: it looks each input
    up among the normalised sequences it was built with and fails on anything else."""

    def __init__(self, full: torch.Tensor, config: GPTConfig):
        super().__init__()
        self.full, self.config = full, config  # (N, T, D) normalised, in the frame it is fed
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so .to(device) has something to move

    def forward(self, x, targets=None):
        out = []
        for row in x:
            hits = [f for f in self.full if torch.allclose(f[:-1], row, atol=1e-5)]
            if len(hits) != 1:
                raise AssertionError("the oracle was fed tokens it does not know (wrong norm or orientation)")
            out.append(hits[0][1:])
        return torch.stack(out), None


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def raw() -> np.ndarray:
    """Five galaxies of 16 tokens; float, each on its own scale, so un-normalising matters."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 16, 48)).astype(np.float32)
    return x * rng.uniform(0.1, 20, (5, 1, 1)).astype(np.float32) + rng.uniform(-50, 50, (5, 1, 1)).astype(np.float32)


@pytest.mark.parametrize("norm", ["image", "patch"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_a_perfect_model_gives_back_the_true_tokens(raw, norm, dtype):
    tokens = raw.astype(np.uint8) if dtype == np.uint8 else raw
    oracle = Oracle(normalise(torch.from_numpy(tokens), norm), CONFIG)
    pred, loss = next_patch_predictions(oracle, tokens, norm=norm, batch_size=2)
    assert pred.shape == tokens.shape and pred.dtype == np.float32
    assert np.isnan(pred[:, 0]).all() and not np.isnan(pred[:, 1:]).any()  # nothing before token 0
    scale = np.abs(tokens.astype(np.float32)).max()
    np.testing.assert_allclose(pred[:, 1:], tokens[:, 1:].astype(np.float32), atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(loss, 0, atol=1e-10)


def test_image_norm_undoes_each_images_own_statistics(raw):
    """Under image norm, a galaxy and a brighter copy normalise alike: only the image's own
    statistics can give each its own prediction back."""
    tokens = np.concatenate([raw[:1], raw[:1] * 3 + 7])
    oracle = Oracle(normalise(torch.from_numpy(raw[:1]), "image"), CONFIG)  # knows only the first
    pred, _ = next_patch_predictions(oracle, tokens, norm="image", batch_size=1)
    np.testing.assert_allclose(pred[:, 1:], tokens[:, 1:], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("norm", ["image", "patch"])
def test_transposed_checkpoints_are_fed_transposed_stamps_and_answer_in_stored_orientation(raw, norm):
    oracle = Oracle(normalise(transpose_tokens(torch.from_numpy(raw), 4, 3), norm), CONFIG)
    with pytest.raises(AssertionError, match="does not know"):
        next_patch_predictions(oracle, raw, norm=norm)  # the stored orientation is not what it knows
    pred, loss = next_patch_predictions(oracle, raw, norm=norm, transpose=True, batch_size=2)
    idx, _ = transpose_index(4, 4, 3)
    first = int(np.flatnonzero(idx == 0)[0])  # the stored token holding the transposed stamp's first patch
    assert first != 0
    missing = np.isnan(pred).all(axis=-1)
    assert missing[:, first].all() and missing.sum() == len(raw) and not np.isnan(pred[~missing]).any()
    np.testing.assert_allclose(pred[~missing], raw[~missing], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(loss, 0, atol=1e-10)


def test_shapes_a_model_cannot_take_are_explained(raw):
    model = GPT(CONFIG)
    with pytest.raises(ValueError, match="token size"):
        next_patch_predictions(model, raw[..., :40])
    with pytest.raises(ValueError, match="block_size"):
        next_patch_predictions(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, patch_size=4, block_size=8)), raw)
    with pytest.raises(ValueError, match="norm"):
        next_patch_predictions(model, raw, norm="pixel")


@pytest.mark.parametrize("n_chan", [3, 1])
def test_plot_writes_a_png_for_8_bit_rgb_and_float_single_band(tmp_path, n_chan):
    rng = np.random.default_rng(1)
    if n_chan == 3:
        observed = rng.integers(0, 256, (3, 16, 48), dtype=np.uint8)
        predicted = observed + rng.normal(0, 20, observed.shape)  # goes past 0-255: clipped
    else:
        observed = rng.lognormal(0, 1, (3, 16, 16)).astype(np.float32)
        predicted = observed * rng.uniform(0.8, 1.2, observed.shape)
    predicted = predicted.astype(np.float32)
    predicted[:, 0] = np.nan
    out = tmp_path / "sub" / "predictions.png"
    plot_predictions(observed, predicted, ["a", "b", "c"], out, patch_size=4, n_chan=n_chan,
                     title="test", losses=[0.1, 0.2, 0.3])
    assert _is_png(out)
    with pytest.raises(ValueError, match="one id per galaxy"):
        plot_predictions(observed, predicted, ["a"], out, patch_size=4, n_chan=n_chan)


@pytest.mark.parametrize("norm,transposed", [("image", False), ("patch", True)])
def test_figure_predictions_end_to_end(micro_tokens, tmp_path, norm, transposed):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=16)).eval()
    ckpt = tmp_path / "ckpt.pt"
    config = {"norm": norm, **({"image_transpose": True} if transposed else {})}
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_args": model.config.to_dict(), "iter_num": 7, "config": config})
    lines = []
    out = tmp_path / "figures" / "predictions.png"
    shown = pipeline.figure_predictions(ckpt, micro_tokens / "test", out, galaxies=3, seed=1, size="20K", log=lines.append)
    assert _is_png(out) and len(shown) == 3 and any("wrote" in line for line in lines)
    split = load_tokens(micro_tokens / "test")
    rows = [list(split.ids).index(i) for i in shown["id"]]
    assert rows == sorted(rows)
    raw = np.asarray(split.tokens[np.array(rows)])
    _, loss = next_patch_predictions(model, raw, norm=norm, transpose=transposed)
    np.testing.assert_allclose(shown["loss"], loss, rtol=1e-5)  # the checkpoint's norm and orientation
    _, other = next_patch_predictions(model, raw, norm=norm, transpose=not transposed)
    assert not np.allclose(shown["loss"], other, rtol=1e-5)
