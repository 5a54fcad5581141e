"""The released AstroPT v1 weights in place of training (config ``models.source: released``).

The paper's eight models were released on the HuggingFace Hub, model repo ``Smith42/astroPT``, at
``models/fully_trained/{0001..2100}M_params/030000_ckpt.pt`` (the checkpoint after the full
30,000 steps; the folder is the size in millions, zero-padded to four digits). With
``models.source: released`` the workflow's ``released_model`` rule takes the place of ``train``
for every size: :func:`released_model` downloads one size's checkpoint, checks it, and writes
exactly the files ``train`` writes, so embedding, probes, the scaling fit and the figures run
unchanged:

- ``ckpt.pt``: this project's checkpoint layout (``model`` weights without the ``_orig_mod.``
  prefix, float32; ``model_args``; ``iter_num``; ``best_val_loss``; ``config`` with the paper's
  training schedule, ``norm: patch``, ``source: released`` and ``image_transpose: true``), no
  optimiser state;
- ``ckpt.json``: the readable sidecar (size, parameters, steps, tokens seen and training FLOPs
  computed from the paper's schedule, losses) plus ``source: released`` and the provenance: repo,
  revision asked for, commit used, file, size and sha256;
- ``metrics.csv``: one row, the final step. The released checkpoints carry no loss curve.

Losses. A v1 checkpoint stores ``best_val_loss``, the lowest validation loss of its periodic
evaluations, not the loss at its last step. It is used as the final validation loss (the
``scaling`` rule fits it against parameters); ``ckpt.json`` says so in ``val_loss_note``. With the
paper's cosine schedule the validation loss falls to the end, so the two should coincide, but that
is an assumption, not a measurement. A checkpoint without ``best_val_loss`` gets NaN.

Orientation. v1's training data path transposed every image (an HWC array ``.swapaxes(0, 2)`` is
C, W, H) before cutting patches, while its probe path (``ToTensor``: C, H, W) did not: the paper's
downstream numbers come from untransposed images fed to models trained on transposed ones. The
converted checkpoint records ``image_transpose: true``; :mod:`astropt.embed` decides per the config
key ``embed.transpose`` (``auto``, the default, reproduces the paper: no transpose).

Downloads go through ``huggingface_hub`` (:class:`astropt.hub.Hub`, shared with the dataset
source: ``snapshot_download`` into its cache, with its file locks and in-call resumption), at the
commit the revision resolves to; the file is then hashed and checked against the size and sha256
the Hub lists for it (``huggingface_hub`` does not check content), and fetched again on a
mismatch. The checkpoint is read with ``torch.load(weights_only=True)``
(memory-mapped, so the 2100M file, optimiser state included, does not have to fit in memory): it
cannot run code.

Example::

    from astropt.config import repo_file
    from astropt.released import released_model
    repo_file("89M")   # 'models/fully_trained/0089M_params/030000_ckpt.pt'
    released_model("89M", cfg["models"]["released"], "results/models/89M/ckpt.pt",
                   "results/models/89M/ckpt.json", "results/models/89M/metrics.csv")
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from astropt.config import repo_file
from astropt.io import atomic_write
from astropt.record import RunRecord
from astropt.model import PRESET_LR, PRESETS, GPT, GPTConfig

__all__ = [
    "ReleasedWeightsError", "paper_schedule", "fetch_checkpoint", "read_checkpoint", "convert_checkpoint",
    "released_model",
]

REPO_TYPE = "model"
PAPER_STEPS = 30_000
"""Optimiser steps of the released checkpoints (``030000_ckpt.pt``)."""
PAPER_BATCH = {"2100M": (16, 20)}
"""(micro-batch, gradient accumulation) of the paper's sweep where not 8 x 40; 320 galaxies per step for all."""
RETRIES = 2
"""Further downloads after one fails its size / sha256 check."""
VAL_LOSS_NOTE = (
    "final_val_loss is the checkpoint's best_val_loss (the lowest of v1's periodic validation losses): "
    "the released checkpoints store no loss at the last step"
)
_CONFIG = "models.released"


class ReleasedWeightsError(RuntimeError):
    """The released weights cannot be fetched or used; the message names the file or config key."""


# --------------------------------------------------------------------------- sizes and files


def paper_schedule(size: str) -> dict[str, Any]:
    """The training settings of the paper's run of ``size`` (AstroPT v1.0.0), as a ``train`` config dict."""
    from astropt.config import TrainConfig

    micro, accum = PAPER_BATCH.get(size, (8, 40))
    cfg = TrainConfig(
        steps=PAPER_STEPS, micro_batch=micro, grad_accum=accum, warmup_steps=2000, decay_steps=29_700,
        min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, device="cuda", dtype="bfloat16",
        compile=True, norm="patch",
    )
    return {k: v for k, v in cfg.to_dict().items() if k not in ("threads", "seed", "eval_galaxies", "peak_tflops")}


# --------------------------------------------------------------------------- the Hub


def fetch_checkpoint(size: str, settings: dict, log: Callable[[str], Any] = print) -> tuple[Path, dict[str, Any]]:
    """Download one size's released checkpoint (or find it in the cache) and verify it.

    Steps (:class:`astropt.hub.Hub`): resolve ``revision`` to a commit (``None``: ``main``, with a
    warning naming the commit to pin); list the file's folder at that commit for its size and
    sha256; fetch it at that commit into the ``huggingface_hub`` cache (``snapshot_download``) or
    find it there; hash it; on a mismatch delete the cached copy and download again
    (:data:`RETRIES` times).

    Args:
        size: A paper size (``"89M"``).
        settings: The ``models.released`` config section: ``repo``, ``revision``, ``path``,
            ``endpoint`` (None: ``HF_ENDPOINT`` or huggingface.co), ``cache_dir`` (None: the
            ``huggingface_hub`` cache, ``HF_HUB_CACHE``).
        log: Called with progress lines.

    Returns:
        The local file (in the cache) and its provenance: repo, repo_type, endpoint, revision (as
        asked), commit, file, size and its sha256 (or ``git-sha1`` for a file kept in git).

    Raises:
        ReleasedWeightsError: Offline mode, an unknown repo / revision / file, lasting network
            errors, or a file that keeps failing its check (naming the config key or file).
    """
    from astropt.hub import Hub

    repo, requested = settings["repo"], settings["revision"]
    path = repo_file(size, settings["path"])
    hub = Hub(repo, REPO_TYPE, settings["endpoint"], None, config=_CONFIG, error=ReleasedWeightsError,
              rule="released_model", prefix="released", keys=("path", "cache_dir"), log=log)
    commit = hub.resolve(requested, f"released: {size}:")
    folder = posixpath.dirname(path)
    files = hub.list_files(commit, folder)
    if path not in files:
        nearby = sorted(files)
        raise ReleasedWeightsError(
            f"config key '{_CONFIG}.path': {path} (size {size}) is not in {repo} at commit {commit}; "
            f"{folder or 'the top level'} holds: {', '.join(nearby[:8]) or 'nothing'}"
            + (f", ... ({len(nearby)} in all)" if len(nearby) > 8 else "")
        )
    remote = files[path]
    log(f"released: {size}: fetching {path} ({remote.size / 1e6:,.1f} MB), or finding it in the cache")
    local = hub.fetch([remote], commit, cache_dir=settings["cache_dir"], workers=1, retries=RETRIES)[path]
    log(f"released: {size}: {path} verified ({remote.hash_kind} {remote.expected_hash}), in {local}")
    info = {
        "repo": repo, "repo_type": REPO_TYPE, "endpoint": hub.endpoint, "revision": requested, "commit": commit,
        "file": path, "size": remote.size, remote.hash_kind: remote.expected_hash,
    }
    return local, info


# --------------------------------------------------------------------------- the checkpoint


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a (v1) checkpoint with ``torch.load(weights_only=True)``, memory-mapped where possible
    (:func:`astropt.checkpoint.load_checkpoint`).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not a readable checkpoint dict of tensors and plain data.
    """
    from astropt.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, mmap=True)
    except (ValueError, OSError):  # not a zip file (cannot be mapped), or unreadable: load_checkpoint explains
        return load_checkpoint(path)


def _as_float(value: Any) -> float | None:
    """A loss stored as a float or a one-element tensor (v1), else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _model_config(ckpt: dict[str, Any], size: str, source: str) -> GPTConfig:
    """The shape of a v1 checkpoint, checked to be the paper's ``size``.

    Raises:
        ReleasedWeightsError: If the checkpoint lacks its weights or shape, or is not the size's model.
    """
    for key in ("model", "model_args"):
        if not isinstance(ckpt.get(key), dict):
            raise ReleasedWeightsError(
                f"{source} has no '{key}' dict: not an AstroPT checkpoint (keys: {sorted(ckpt)})"
            )
    try:
        config = GPTConfig.from_dict(ckpt["model_args"])
    except (TypeError, ValueError) as err:
        raise ReleasedWeightsError(f"{source}: unusable model_args {ckpt['model_args']}: {err}") from err
    want = PRESETS[size]
    diff = {k: (getattr(config, k), getattr(want, k)) for k in ("n_layer", "n_head", "n_embd", "n_chan", "patch_size")
            if getattr(config, k) != getattr(want, k)}
    if diff:
        raise ReleasedWeightsError(
            f"{source} is not the paper's {size} model: "
            + ", ".join(f"{k} {a} (expected {b})" for k, (a, b) in diff.items())
            + f"; check config key '{_CONFIG}.path'"
        )
    return config


def convert_checkpoint(
    ckpt: dict[str, Any], size: str, provenance: dict[str, Any], source: str = "checkpoint"
) -> tuple[dict[str, Any], RunRecord, pd.DataFrame]:
    """This project's ``ckpt.pt`` dict, ``ckpt.json`` record and ``metrics.csv`` table of a v1 checkpoint.

    Args:
        ckpt: The loaded v1 checkpoint (``model``, ``model_args``; ``iter_num``, ``best_val_loss``,
            ``config`` used when present; ``optimizer`` dropped).
        size: The paper size it should be; its shape is checked against :data:`astropt.model.PRESETS`.
        provenance: Where it came from (see :func:`fetch_checkpoint`), stored in both files.
        source: Name of the checkpoint for error messages.

    Raises:
        ReleasedWeightsError: If the checkpoint lacks its weights or shape, or is not the size's model.
    """
    from astropt.checkpoint import clean_state_dict, model_from_checkpoint
    from astropt.train import METRIC_COLUMNS, lr_at
    from astropt.config import TrainConfig

    config = _model_config(ckpt, size, source)
    # float32 weights without compile / DDP prefixes; v1 trained fp32 master weights (bf16 autocast),
    # so this is normally no copy at all
    state = {k: v.float() if v.is_floating_point() else v for k, v in clean_state_dict(ckpt["model"]).items()}
    try:
        model = model_from_checkpoint({"model": state, "model_args": config.to_dict()}, source=source)
    except ValueError as err:
        raise ReleasedWeightsError(str(err)) from err
    n_params = model.get_num_params()
    del model

    steps = ckpt.get("iter_num", PAPER_STEPS)
    steps = int(steps.item() if isinstance(steps, torch.Tensor) else steps)
    best = _as_float(ckpt.get("best_val_loss"))
    schedule = paper_schedule(size)
    lr = PRESET_LR[size]
    seq = config.block_size - 1  # positions trained per galaxy, as the trainer counts them
    tokens = steps * schedule["micro_batch"] * schedule["grad_accum"] * seq
    with torch.device("meta"):
        flops = float(tokens * GPT(config).flops_per_token(seq))
    train_config = {"size": size, "lr": lr, **schedule, "source": "released", "image_transpose": True}
    v1_config = ckpt.get("config")
    val = best if best is not None else float("nan")
    out_ckpt = {
        "model": state,
        "model_args": config.to_dict(),
        "iter_num": steps,
        "best_val_loss": val,
        "config": train_config,
        "released": {**provenance, "model_args": dict(ckpt["model_args"])},
    }
    if isinstance(v1_config, dict):
        out_ckpt["v1_config"] = v1_config
    sidecar = RunRecord(
        size=size, params=n_params, steps=steps, tokens_seen=int(tokens), flops=flops,
        final_val_loss=val, best_val_loss=val,
        val_loss_note=VAL_LOSS_NOTE if best is not None else "the checkpoint has no best_val_loss",
        model_args=config.to_dict(), lr=lr, train=schedule, source="released", image_transpose=True,
        released=provenance,
    )
    row = {c: float("nan") for c in METRIC_COLUMNS}
    row.update(step=steps, tokens_seen=int(tokens), flops=flops, val_loss=val,
               lr=lr_at(steps, lr, TrainConfig.from_dict(schedule)))
    metrics = pd.DataFrame([row], columns=METRIC_COLUMNS)
    return out_ckpt, sidecar, metrics


def released_model(
    size: str,
    settings: dict,
    out_ckpt: str | os.PathLike,
    out_sidecar: str | os.PathLike,
    out_metrics: str | os.PathLike,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Fetch, verify and convert one size's released checkpoint; write ``ckpt.pt``, ``ckpt.json``, ``metrics.csv``.

    Args:
        size: A paper size.
        settings: The ``models.released`` config section (see :func:`fetch_checkpoint`).
        out_ckpt, out_sidecar, out_metrics: The three outputs of the ``train`` rule.
        log: Called with progress lines.

    Returns:
        The sidecar written to ``out_sidecar``.
    """
    from astropt.checkpoint import save_checkpoint

    local, provenance = fetch_checkpoint(size, settings, log=log)
    try:
        ckpt = read_checkpoint(local)
    except ValueError as err:
        raise ReleasedWeightsError(f"{provenance['file']} from {provenance['repo']}: {err}") from err
    source = f"{provenance['repo']}/{provenance['file']}"
    out, sidecar, metrics = convert_checkpoint(ckpt, size, provenance, source=source)
    if "optimizer" in ckpt:
        log(f"released: {size}: optimiser state left out of {out_ckpt} (only the weights are needed downstream)")
    save_checkpoint(out_ckpt, out)
    del out, ckpt
    sidecar.write(out_sidecar)
    atomic_write(out_metrics, lambda p: metrics.to_csv(p, index=False))
    loss = sidecar.final_val_loss
    log(
        f"released: {size}: {sidecar.params:,} parameters, step {sidecar.steps:,}, "
        + (f"best val loss {loss:.5f} (used as the final one)" if np.isfinite(loss) else "no validation loss stored")
        + f"; trained on transposed images (image_transpose); wrote {out_ckpt}"
    )
    return sidecar.to_dict()
