"""Next-patch predictions in pixel units (astropt.predict) and their figure, checked on what
it draws (the stamps, their difference, the box of the patch without a prediction, titles).

Run: python -m pytest tests/test_predict.py -q
"""

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from astropt.checkpoint import save_checkpoint
from astropt.embed import transpose_index, transpose_tokens
from astropt.model import GPT, GPTConfig
from astropt.predict import figure_predictions, next_patch_predictions, plot_predictions
from astropt.patches import normalise, spiral_order, tokens_to_image
from astropt.shards import load_tokens
from figure_helpers import colorbars, panels, saved_figures  # noqa: F401 (saved_figures: a fixture)

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


def _boxes(ax):
    """Lower-left corners of the dashed boxes drawn on a panel."""
    return [r.get_xy() for r in ax.patches if isinstance(r, Rectangle) and r.get_linestyle() == "--"]


def test_plot_draws_observed_predicted_and_difference_of_8_bit_rgb(tmp_path, saved_figures):
    rng = np.random.default_rng(1)
    observed = rng.integers(0, 256, (3, 16, 48), dtype=np.uint8)
    predicted = (observed + rng.normal(0, 20, observed.shape)).astype(np.float32)  # goes past 0-255: clipped
    predicted[:, 0] = np.nan
    out = tmp_path / "sub" / "predictions.png"
    plot_predictions(observed, predicted, ["a", "b", "c"], out, patch_size=4, n_chan=3,
                     title="test", losses=[0.1, 0.2, 0.3])
    fig = saved_figures[out]
    assert fig.get_suptitle() == "test"
    axes = panels(fig)
    bars = colorbars(fig)
    assert len(axes) == 9 and len(bars) == 3  # a row of three per galaxy, a colour bar per difference
    centre = spiral_order(4)[0]  # token 0, the patch without a prediction: the centre of the spiral
    box = (centre % 4 * 4 - 0.5, centre // 4 * 4 - 0.5)
    for i, (galaxy, loss) in enumerate(zip("abc", (0.1, 0.2, 0.3))):
        a_obs, a_pred, a_diff = axes[3 * i: 3 * i + 3]
        assert a_obs.get_title() == f"{galaxy}: observed"
        assert a_pred.get_title() == f"predicted (loss {loss:.4f})"
        assert a_diff.get_title() == "observed − predicted, band mean (8-bit counts)"
        obs = tokens_to_image(observed[i], 4, 3)
        pred = tokens_to_image(predicted[i], 4, 3)
        missing = np.isnan(pred)
        assert missing.sum() == 4 * 4 * 3
        (im_obs,), (im_pred,), (im_diff,) = a_obs.get_images(), a_pred.get_images(), a_diff.get_images()
        np.testing.assert_array_equal(im_obs.get_array(), obs)
        shown = np.asarray(im_pred.get_array())
        assert shown.dtype == np.uint8
        np.testing.assert_array_equal(shown[~missing], np.clip(np.rint(pred[~missing]), 0, 255))
        diff = im_diff.get_array()
        np.testing.assert_allclose(diff.filled(np.nan), (obs - pred).mean(axis=-1), rtol=1e-6)  # NaN: masked
        assert diff.mask.sum() == 16  # the patch without a prediction
        (bar,) = [b for b in bars if b.mappable is im_diff]
        assert bar.vmin == -bar.vmax and bar.vmax == pytest.approx(np.percentile(np.abs(diff.compressed()), 99.5))
        assert not _boxes(a_obs) and _boxes(a_pred) == _boxes(a_diff) == [box]
    with pytest.raises(ValueError, match="one id per galaxy"):
        plot_predictions(observed, predicted, ["a"], out, patch_size=4, n_chan=3)


def test_plot_of_float_single_band_shares_one_scaling_per_row(tmp_path, saved_figures):
    """A perfect prediction of float data: the predicted stamp looks like the observed one, with
    the patch without a prediction flat grey, and the difference is 0."""
    rng = np.random.default_rng(1)
    observed = rng.lognormal(0, 1, (2, 16, 16)).astype(np.float32) * np.array([[[1.0]], [[50.0]]], dtype=np.float32)
    predicted = observed.copy()
    predicted[:, 0] = np.nan
    plot_predictions(observed, predicted, ["a", "b"], tmp_path / "predictions.png", patch_size=4, n_chan=1)
    fig = saved_figures[tmp_path / "predictions.png"]
    axes = panels(fig)
    assert len(axes) == 6 and len(colorbars(fig)) == 2 and fig.get_suptitle() == ""
    for i in range(2):
        a_obs, a_pred, a_diff = axes[3 * i: 3 * i + 3]
        assert a_obs.get_title() == f"{'ab'[i]}: observed" and a_pred.get_title() == "predicted"
        assert a_diff.get_title() == "observed − predicted (data units)"
        missing = np.isnan(tokens_to_image(predicted[i], 4, 1)[..., 0])
        (im_obs,), (im_pred,), (im_diff,) = a_obs.get_images(), a_pred.get_images(), a_diff.get_images()
        obs, pred = np.asarray(im_obs.get_array()), np.asarray(im_pred.get_array())
        assert obs.shape == pred.shape == (16, 16) and im_obs.get_cmap().name == "gray"
        assert 0 <= obs.min() and obs.max() <= 1  # scaled for display
        np.testing.assert_array_equal(pred[~missing], obs[~missing])  # one scaling for both
        assert (pred[missing] == 0.5).all()
        order = np.argsort(tokens_to_image(observed[i], 4, 1)[..., 0], axis=None)
        assert (np.diff(obs.ravel()[order]) >= -1e-7).all()  # its own stamp: brighter stays brighter
        np.testing.assert_array_equal(im_diff.get_array().compressed(), 0)
        assert im_diff.get_array().mask.sum() == 16


@pytest.mark.parametrize("norm,transposed", [("image", False), ("patch", True)])
def test_figure_predictions_end_to_end(micro_tokens, tmp_path, saved_figures, norm, transposed):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=16)).eval()
    ckpt = tmp_path / "ckpt.pt"
    config = {"norm": norm, **({"image_transpose": True} if transposed else {})}
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_args": model.config.to_dict(), "iter_num": 7, "config": config})
    lines = []
    out = tmp_path / "figures" / "predictions.png"
    shown = figure_predictions(ckpt, micro_tokens / "test", out, galaxies=3, seed=1, size="20K", log=lines.append)
    assert len(shown) == 3 and any("wrote" in line for line in lines)
    fig = saved_figures[out]
    axes = panels(fig)
    assert len(axes) == 9  # a row per galaxy shown
    assert [ax.get_title() for ax in axes[::3]] == [f"{i}: observed" for i in shown["id"]]
    assert [ax.get_title() for ax in axes[1::3]] == [f"predicted (loss {v:.4f})" for v in shown["loss"]]
    title = " ".join(fig.get_suptitle().split())
    assert title.startswith(f"20K model ({model.get_num_params():,} parameters, step 7), ")
    assert f"mean loss {shown['loss'].to_numpy().mean():.4f}" in title
    assert ("of the transposed stamp" in title) == transposed
    assert ("image normalisation" if norm == "image" else "per-patch normalisation") in title
    split = load_tokens(micro_tokens / "test")
    rows = [list(split.ids).index(i) for i in shown["id"]]
    assert rows == sorted(rows)
    raw = np.asarray(split.tokens[np.array(rows)])
    pred, loss = next_patch_predictions(model, raw, norm=norm, transpose=transposed)
    np.testing.assert_allclose(shown["loss"], loss, rtol=1e-5)  # the checkpoint's norm and orientation
    patch, n_chan = split.meta["patch_size"], split.meta["n_chan"]
    for i in range(3):  # the galaxies shown, and the model's predictions of them
        (im_obs,), (im_pred,) = axes[3 * i].get_images(), axes[3 * i + 1].get_images()
        np.testing.assert_array_equal(im_obs.get_array(), tokens_to_image(raw[i], patch, n_chan))
        p = tokens_to_image(pred[i], patch, n_chan)
        ok = ~np.isnan(p)
        np.testing.assert_array_equal(np.asarray(im_pred.get_array())[ok], np.clip(np.rint(p[ok]), 0, 255))
    _, other = next_patch_predictions(model, raw, norm=norm, transpose=not transposed)
    assert not np.allclose(shown["loss"], other, rtol=1e-5)
