"""Next-patch predictions of a trained model, back in pixel units, and a figure of them.

AstroPT (arXiv:2405.14930) is trained to predict patch ``k`` of a galaxy's centre-out spiral
from patches ``0 .. k-1`` (teacher forcing: every earlier patch is the true one). This module
runs a model exactly that way over whole stamps and turns its predictions back into raw
pixel values, so they can be drawn beside the observed stamp:

* the input is normalised as in training (``norm`` from the checkpoint config, the whole
  sequence at once, as :mod:`astropt.train` does before cutting ``x[:, :-1]``);
* ``norm="image"``: each image's own mean and std (the statistics its input was normalised
  with) turn the predictions back into pixel values: a real prediction;
* ``norm="patch"`` (the paper's): the model predicts each patch standardised on its own, i.e.
  its shape only, not its brightness or contrast; the predictions are given the true target
  patch's mean and std. The figure shows predicted structure inside each patch, not predicted
  brightness;
* the first patch fed has nothing before it and gets no prediction: NaN;
* a model trained on transposed stamps (checkpoint config ``image_transpose: true``, the
  released v1 weights) is fed the transposed stamps' tokens and its predictions are transposed
  back (:func:`astropt.embed.transpose_tokens` is its own inverse), so everything is in the
  stored orientation. Its spiral is the transposed stamp's: "the patches before" and the
  patch without a prediction are those of that spiral.

Example::

    from astropt.checkpoint import load_model
    from astropt.predict import next_patch_predictions, plot_predictions

    model = load_model("results/models/2M/ckpt.pt")
    pred, loss = next_patch_predictions(model, raw, norm="image")   # raw: (N, T, D) uint8
    plot_predictions(raw, pred, ids, "predictions.png", patch_size=16, n_chan=3)
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from astropt.embed import transpose_tokens
from astropt.figures import _displayable, _save
from astropt.model import GPT
from astropt.patches import grid_side, normalise, spiral_order, token_stats, tokens_to_image

__all__ = ["figure_predictions", "next_patch_predictions", "plot_predictions"]

EPS = 1e-8  # normalise()'s default: the same eps undoes it
DIFF_CMAP = colormaps["RdBu_r"].with_extremes(bad="0.5")  # no prediction: grey


@torch.no_grad()
def next_patch_predictions(
    model: GPT,
    tokens: np.ndarray,
    norm: Literal["patch", "image"] = "patch",
    transpose: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The model's prediction of every patch from the patches before it, in raw pixel units.

    Args:
        model: A trained GPT (anything called as ``model(x) -> (pred, loss)`` with a
            ``config`` holding ``input_dim``, ``block_size``, ``patch_size``, ``n_chan``).
        tokens: Raw spiral tokens ``(N, T, D)`` as stored (uint8 or float; a memmap is fine).
        norm: The normalisation the model was trained with (checkpoint config ``norm``).
        transpose: The model was trained on transposed stamps (checkpoint config
            ``image_transpose``): feed those and transpose the predictions back.
        batch_size: Galaxies per forward pass.
        device: Where to run; bf16 autocast on CUDA, float32 elsewhere.

    Returns:
        ``(predicted, loss)``: ``predicted`` (N, T, D) float32 in the stored orientation and
        raw units, NaN for the patch that had nothing before it (token 0, or for ``transpose``
        the token holding the transposed stamp's first patch); for ``norm="patch"`` each
        predicted patch carries its true patch's mean and std (see the module docstring).
        ``loss`` (N,) float32: each galaxy's Huber loss in normalised units, mean over the
        ``T - 1`` predicted patches, the quantity training minimises.

    Raises:
        ValueError: On a token size or sequence length the model cannot take, or an unknown norm.
    """
    if norm not in ("patch", "image"):
        raise ValueError(f"norm must be 'patch' or 'image' (the checkpoint config's 'norm'), got {norm!r}")
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (N, T, D), got shape {tuple(tokens.shape)}")
    n, t, d = tokens.shape
    cfg = model.config
    if d != cfg.input_dim:
        raise ValueError(
            f"token size ({d}) doesn't match the model's patch size ({cfg.input_dim} = "
            f"patch_size {cfg.patch_size}**2 * n_chan {cfg.n_chan})"
        )
    if t < 2 or t - 1 > cfg.block_size:
        raise ValueError(
            f"{t} tokens per galaxy: the model predicts tokens 1..T-1 from T-1 inputs, which needs "
            f"2 <= T <= block_size + 1 = {cfg.block_size + 1}"
        )
    device = torch.device(device)
    model = model.to(device).eval()
    use_bf16 = device.type == "cuda"
    predicted = np.empty((n, t, d), dtype=np.float32)
    losses = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        raw = torch.from_numpy(np.asarray(tokens[start:stop])).to(device).float()  # (B, T, D)
        if transpose:
            raw = transpose_tokens(raw, cfg.patch_size, cfg.n_chan)  # the stamps the model was trained on
        x = normalise(raw, norm)  # (B, T, D), the whole sequence as in training
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out, _ = model(x[:, :-1])  # (B, T-1, D): out[:, k-1] predicts x[:, k]
        out = out.float()
        losses[start:stop] = F.huber_loss(out, x[:, 1:], reduction="none").mean(dim=(1, 2)).cpu().numpy()
        mean, std = token_stats(raw, norm)  # (B, 1, 1) per image, or (B, T, 1) per patch
        if norm == "patch":  # shape only: the true target patch's level and contrast
            mean, std = mean[:, 1:], std[:, 1:]
        pred = torch.full_like(raw, float("nan"))
        pred[:, 1:] = out * (std + EPS) + mean  # undo normalise(): (x - mean) / (std + eps)
        if transpose:
            pred = transpose_tokens(pred, cfg.patch_size, cfg.n_chan)  # an involution: back to stored
        predicted[start:stop] = pred.cpu().numpy()
    return predicted, losses


def _first_patch_box(pred_tokens: np.ndarray, patch_size: int) -> tuple[float, float] | None:
    """(x, y) of the top-left corner of the patch without a prediction, in pixels."""
    missing = np.flatnonzero(np.isnan(pred_tokens).all(axis=-1))
    if len(missing) == 0:
        return None
    side = grid_side(pred_tokens.shape[0])
    row, col = divmod(int(spiral_order(side)[missing[0]]), side)
    return col * patch_size - 0.5, row * patch_size - 0.5


def plot_predictions(
    observed: np.ndarray,
    predicted: np.ndarray,
    ids: Sequence[str],
    out: str | os.PathLike,
    patch_size: int,
    n_chan: int = 3,
    title: str = "",
    losses: Sequence[float] | None = None,
) -> None:
    """One row per galaxy: observed stamp | predicted stamp | observed - predicted.

    Tokens are put back in image order (:func:`astropt.patches.tokens_to_image`). 8-bit data
    (``observed`` of dtype uint8) are drawn as RGB (or grey) with the prediction rounded and
    clipped to 0-255; float data (FITS) with one asinh scaling per row shared by the observed
    and predicted stamps (:func:`astropt.figures._displayable` of the two side by side), so
    they are comparable. The difference is the mean over bands, on a diverging colour map with
    limits symmetric about 0 (99.5th percentile of its magnitude in that row). The patch with
    no prediction is drawn flat grey and outlined with a dashed box.

    Args:
        observed: Raw spiral tokens ``(N, T, D)``.
        predicted: :func:`next_patch_predictions`' ``(N, T, D)`` (NaN where none).
        ids: Galaxy ids, one per row.
        out: PNG path.
        patch_size: Patch side in pixels.
        n_chan: Bands.
        title: Figure title (e.g. the model's size).
        losses: Each galaxy's loss, shown over its predicted stamp.
    """
    observed, predicted = np.asarray(observed), np.asarray(predicted, dtype=np.float32)
    if observed.shape != predicted.shape or observed.ndim != 3:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} must both be (N, T, D)")
    n = len(observed)
    if n < 1 or len(ids) != n:
        raise ValueError(f"plot_predictions needs at least one galaxy and one id per galaxy ({n} galaxies, {len(ids)} ids)")
    eight_bit = observed.dtype == np.uint8
    units = "8-bit counts" if eight_bit else "data units"
    fig = Figure(figsize=(3 * 2.2 + 0.9, 2.3 * n + 0.4), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        obs = tokens_to_image(observed[i], patch_size, n_chan)  # (H, W, C)
        pred = tokens_to_image(predicted[i], patch_size, n_chan).astype(np.float32)
        missing = np.isnan(pred)
        if eight_bit:
            show_obs = _displayable(obs)
            show_pred = _displayable(np.clip(np.rint(np.where(missing, 128, pred)), 0, 255).astype(np.uint8))
        else:
            both = _displayable(np.concatenate([obs.astype(np.float32), pred], axis=1))  # one scaling
            w = obs.shape[1]
            show_obs = both[:, :w]
            show_pred = np.where(np.isnan(both[:, w:]), 0.5, both[:, w:])  # NaN patch: flat grey
        diff = (obs.astype(np.float32) - pred).mean(axis=-1)  # (H, W), NaN where no prediction
        finite = np.abs(diff[np.isfinite(diff)])
        lim = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        cmap = "gray" if show_obs.ndim == 2 else None
        vmin, vmax = (0, 255 if eight_bit else 1) if cmap else (None, None)
        a_obs, a_pred, a_diff = axes[i]
        for ax, shown in ((a_obs, show_obs), (a_pred, show_pred)):
            ax.imshow(shown, interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
        im = a_diff.imshow(np.ma.masked_invalid(diff), interpolation="nearest", cmap=DIFF_CMAP, vmin=-lim, vmax=lim)
        cbar = fig.colorbar(im, ax=a_diff, shrink=0.85, pad=0.02)
        cbar.ax.tick_params(labelsize=6)
        box = _first_patch_box(predicted[i], patch_size)
        if box is not None:
            for ax in (a_pred, a_diff):
                ax.add_patch(Rectangle(box, patch_size, patch_size, fill=False, ec="gold", lw=1.0, ls="--"))
        for ax in axes[i]:
            ax.set(xticks=[], yticks=[])
        a_obs.set_title(f"{ids[i]}: observed", fontsize=7)
        loss = f" (loss {float(losses[i]):.4f})" if losses is not None else ""
        a_pred.set_title(f"predicted{loss}", fontsize=7)
        a_diff.set_title(f"observed − predicted{', band mean' if n_chan > 1 else ''} ({units})", fontsize=7)
    if title:
        fig.suptitle("\n".join(textwrap.fill(line, 85) for line in title.splitlines()), fontsize=8)
    _save(fig, out)


# The predictions figure's stage: what the workflow's figure_predictions rule calls.


def figure_predictions(
    checkpoint, token_dir, out, galaxies: int = 6, seed: int = 0, size: str = "", log=print
) -> pd.DataFrame:
    """Galaxies of a split beside a model's next-patch predictions and their difference
    (:func:`next_patch_predictions`, :func:`plot_predictions`), normalised and oriented as the checkpoint was trained.

    ``galaxies`` rows are drawn at random (``seed``) and shown in split order; ``size`` names
    the model in the title (default: the checkpoint's folder). Returns the galaxies shown:
    ``id`` and ``loss`` (each one's Huber loss in normalised units, as in training)."""
    from pathlib import Path

    from astropt.checkpoint import load_checkpoint, model_from_checkpoint
    from astropt.shards import load_tokens

    state = load_checkpoint(checkpoint)
    ckpt_config = state.get("config") or {}
    norm = ckpt_config.get("norm", "patch")  # AstroPT v1 used the per-patch one
    transpose = bool(ckpt_config.get("image_transpose", False))
    step = state.get("iter_num")
    model = model_from_checkpoint(state, source=checkpoint)
    del state
    split = load_tokens(token_dir)
    patch, n_chan = split.meta["patch_size"], split.meta["n_chan"]
    if (patch, n_chan) != (model.config.patch_size, model.config.n_chan):
        raise ValueError(
            f"{token_dir} holds {patch}px patches of {n_chan} bands but {checkpoint} was trained on "
            f"{model.config.patch_size}px patches of {model.config.n_chan}: tokenise with the model's settings"
        )
    n = min(galaxies, len(split.ids))
    if n < 1:
        raise ValueError(f"{token_dir} holds no galaxies to show")
    rows = np.sort(np.random.default_rng(seed).choice(len(split.ids), size=n, replace=False))
    raw = np.asarray(split.tokens[rows])  # (n, T, D) as stored
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(
        f"next-patch predictions of {n} galaxies of {token_dir} by {checkpoint} (norm '{norm}', "
        f"{'transposed' if transpose else 'untransposed'} stamps fed, device {device})"
    )
    pred, loss = next_patch_predictions(model, raw, norm=norm, transpose=transpose, device=device)
    name = size or Path(checkpoint).parent.name
    at = f", step {step:,}" if isinstance(step, int) else ""
    how = "image normalisation" if norm == "image" else "per-patch normalisation: patch shapes only"
    title = (
        f"{name} model ({model.get_num_params():,} parameters{at}), {how}; mean loss {loss.mean():.4f}\n"
        "each patch predicted from the true patches before it in the centre-out spiral"
        + (" of the transposed stamp (trained so)" if transpose else "")
        + "; dashed box: the first patch, with nothing to predict it from"
    )
    ids = [str(i) for i in split.ids[rows]]
    plot_predictions(raw, pred, ids, out, patch, n_chan, title=title, losses=loss)
    log(f"wrote {out}: per-galaxy loss {', '.join(f'{v:.4f}' for v in loss)}")
    return pd.DataFrame({"id": ids, "loss": loss})
