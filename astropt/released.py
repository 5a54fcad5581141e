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

Downloads go through ``huggingface_hub`` (``hf_hub_download``: its cache, file locks and in-call
resumption), at the commit the revision resolves to; the file is then hashed and checked against
the size and sha256 the Hub lists for it (``hf_hub_download`` does not check content), and
fetched again on a mismatch. The checkpoint is read with ``torch.load(weights_only=True)``
(memory-mapped, so the 2100M file, optimiser state included, does not have to fit in memory): it
cannot run code.

Example::

    from astropt.released import released_model, repo_file
    repo_file("89M")   # 'models/fully_trained/0089M_params/030000_ckpt.pt'
    released_model("89M", cfg["models"]["released"], "results/models/89M/ckpt.pt",
                   "results/models/89M/ckpt.json", "results/models/89M/metrics.csv")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import string
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from astropt.hf import _first_line  # the Hub errors are worded alike
from astropt.io import atomic_write
from astropt.model import PRESET_LR, PRESETS, GPT, GPTConfig

__all__ = [
    "ReleasedWeightsError", "DEFAULT_REPO", "DEFAULT_PATH", "size_digits", "repo_file", "config_problems",
    "paper_schedule", "fetch_checkpoint", "read_checkpoint", "convert_checkpoint", "released_model",
]

DEFAULT_REPO = "Smith42/astroPT"
DEFAULT_PATH = "models/fully_trained/{size_digits}M_params/030000_ckpt.pt"
REPO_TYPE = "model"
PLACEHOLDERS = ("size", "size_digits")
"""Fields of ``models.released.path``: the size's name (``89M``) and its millions, zero-padded (``0089``)."""
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
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_CHUNK = 8 << 20


class ReleasedWeightsError(RuntimeError):
    """The released weights cannot be fetched or used; the message names the file or config key."""


# --------------------------------------------------------------------------- sizes and files


def size_digits(size: str) -> str:
    """The repo's folder number of a paper size: its millions, zero-padded to four digits.

    ``"1M"`` -> ``"0001"``, ``"89M"`` -> ``"0089"``, ``"2100M"`` -> ``"2100"``.

    Raises:
        ValueError: If ``size`` is not one of the paper's sizes (:data:`astropt.model.PRESETS`).
    """
    if size not in PRESETS:
        raise ValueError(
            f"{size!r} is not one of the paper's sizes ({', '.join(PRESETS)}): there are no released weights for it"
        )
    return f"{int(size.removesuffix('M')):04d}"


def repo_file(size: str, pattern: str = DEFAULT_PATH) -> str:
    """Path of a paper size's checkpoint in the repo: ``pattern`` with ``{size}`` / ``{size_digits}`` filled.

    Raises:
        ValueError: For a size without released weights, or a pattern with other fields.
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    unknown = [f for f in fields if f not in PLACEHOLDERS]
    if unknown:
        raise ValueError(
            f"config key '{_CONFIG}.path': unknown field(s) {unknown} in {pattern!r}; "
            f"known: {{size}} (e.g. 89M) and {{size_digits}} (e.g. 0089)"
        )
    return pattern.format(size=size, size_digits=size_digits(size))


def config_problems(raw: dict) -> list[str]:
    """Checks of a config with ``models.source: released`` that the schema cannot express.

    Called by :func:`astropt.config.load_config`. Only the paper's sizes have released weights,
    with their own shapes (a ``custom_sizes`` entry of the same name would change it); the tokens
    must fit them: 16 px patches of 3 bands, at most ``block_size`` (1024) per galaxy; and no two
    sizes may map to the same file.

    Returns:
        One line per problem, each naming its config key (empty: fine).
    """
    if raw["models"]["source"] != "released":
        return []
    problems = []
    sizes = [s for s in raw["sizes"] if s in PRESETS]
    for i, name in enumerate(raw["sizes"]):
        if name not in PRESETS:
            problems.append(
                f"config key 'sizes[{i}]': {name!r} has no released weights (models.source: released); "
                f"the paper's sizes are {', '.join(PRESETS)}"
            )
        elif name in raw["custom_sizes"]:
            problems.append(
                f"config key 'custom_sizes.{name}': overrides the paper's {name}, but the released weights have the "
                f"paper's shape (models.source: released): remove it"
            )
    image, patch, chans = raw["data"]["image_size"], raw["tokens"]["patch_size"], raw["data"]["n_chan"]
    p = PRESETS["1M"]  # every preset has the same patches, bands and block size
    if patch != p.patch_size:
        problems.append(
            f"config key 'tokens.patch_size': the released models take {p.patch_size}x{p.patch_size} px patches, "
            f"not {patch} (models.source: released)"
        )
    if chans != p.n_chan:
        problems.append(
            f"config key 'data.n_chan': the released models take {p.n_chan} bands (g, r, z), not {chans}"
        )
    if patch == p.patch_size and (image // patch) ** 2 > p.block_size:
        problems.append(
            f"config key 'data.image_size': {image} px makes {(image // patch) ** 2} tokens per galaxy, more "
            f"than the released models' {p.block_size} positions (at most {int(math.isqrt(p.block_size)) * patch} px)"
        )
    pattern = raw["models"]["released"]["path"]
    try:
        files = {s: repo_file(s, pattern) for s in sizes}
    except ValueError as err:
        problems.append(str(err))
    else:
        by_file: dict[str, list[str]] = {}
        for s, f in files.items():
            by_file.setdefault(f, []).append(s)
        for f, same in by_file.items():
            if len(same) > 1:
                problems.append(
                    f"config key '{_CONFIG}.path': {pattern!r} names the same file ({f}) for sizes "
                    f"{', '.join(same)}; use {{size_digits}} or {{size}}"
                )
    return problems


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


@contextlib.contextmanager
def _hub_errors(what: str, repo: str, endpoint: str) -> Iterator[None]:
    """Turn ``huggingface_hub`` / network errors into :class:`ReleasedWeightsError` about ``what``."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    where = f"model repo {repo} on {endpoint}"
    try:
        yield
    except GatedRepoError as err:
        raise ReleasedWeightsError(
            f"{what}: {where} is gated; accept its conditions on the Hub and set HF_TOKEN (or `hf auth login`) "
            f"({_first_line(err)})"
        ) from err
    except RepositoryNotFoundError as err:
        raise ReleasedWeightsError(
            f"{what}: {where} not found, or private without a valid token "
            f"(config keys '{_CONFIG}.repo', '{_CONFIG}.endpoint') ({_first_line(err)})"
        ) from err
    except RevisionNotFoundError as err:
        raise ReleasedWeightsError(
            f"{what}: revision not found in {where} (config key '{_CONFIG}.revision') ({_first_line(err)})"
        ) from err
    except RemoteEntryNotFoundError as err:
        raise ReleasedWeightsError(
            f"{what}: no such file or folder in {where} (config key '{_CONFIG}.path') ({_first_line(err)})"
        ) from err
    except HfHubHTTPError as err:
        raise ReleasedWeightsError(f"{what}: the Hub answered with an error ({_first_line(err)})") from err
    except httpx2.TransportError as err:
        raise ReleasedWeightsError(
            f"{what}: cannot reach {endpoint} ({type(err).__name__}: {err}); check the network and config key "
            f"'{_CONFIG}.endpoint', then rerun"
        ) from err


def _hash(path: Path, remote) -> tuple[int, str]:
    """Size and hash (of the kind ``remote`` expects: sha256, or git's blob sha1) of a local file."""
    h = remote.new_hasher()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def fetch_checkpoint(size: str, settings: dict, log: Callable[[str], Any] = print) -> tuple[Path, dict[str, Any]]:
    """Download one size's released checkpoint (or find it in the cache) and verify it.

    Steps: resolve ``revision`` to a commit (``None``: ``main``, with a warning naming the commit to
    pin); list the file's folder at that commit for its size and sha256; ``hf_hub_download`` it at
    that commit; hash it; on a mismatch delete the cached copy and download again (:data:`RETRIES`
    times).

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
    from huggingface_hub import HfApi, constants, hf_hub_download

    from astropt.hf import RemoteFile

    if constants.is_offline_mode():
        raise ReleasedWeightsError(
            "HF_HUB_OFFLINE is set, but the released weights are fetched from the Hub (and checked against its "
            "listing): unset it for the released_model rule, which runs where Snakemake runs"
        )
    repo, requested = settings["repo"], settings["revision"]
    path = repo_file(size, settings["path"])
    api = HfApi(endpoint=settings["endpoint"], library_name="astropt-workflow")
    endpoint = api.endpoint
    with _hub_errors(f"resolving revision {requested or 'main'!r}", repo, endpoint):
        commit = api.model_info(repo, revision=requested or "main").sha
    if not commit:
        raise ReleasedWeightsError(f"{endpoint} gave no commit sha for {repo} at {requested or 'main'!r}")
    log(f"released: {size}: {repo} on {endpoint}, revision {requested or 'main'!r} = commit {commit}")
    if requested is None or not _COMMIT_RE.fullmatch(requested):
        log(
            f"released: WARNING: config key '{_CONFIG}.revision' is "
            f"{'not set (main)' if requested is None else repr(requested)}, not a commit sha: a rerun may get other "
            f"weights. Pin it for reproducibility: revision: {commit}"
        )
    folder = posixpath.dirname(path)
    with _hub_errors(f"listing {folder or '/'} at {commit}", repo, endpoint):
        entries = list(api.list_repo_tree(repo, path_in_repo=folder or None, revision=commit, repo_type=REPO_TYPE))
    entry = next((e for e in entries if e.path == path and hasattr(e, "blob_id")), None)
    if entry is None:
        nearby = sorted(e.path for e in entries)
        raise ReleasedWeightsError(
            f"config key '{_CONFIG}.path': {path} (size {size}) is not in {repo} at commit {commit}; "
            f"{folder or 'the top level'} holds: {', '.join(nearby[:8]) or 'nothing'}"
            + (f", ... ({len(nearby)} in all)" if len(nearby) > 8 else "")
        )
    remote = RemoteFile(
        path, int(entry.lfs.size if entry.lfs else entry.size), entry.lfs.sha256 if entry.lfs else None, entry.blob_id
    )
    log(f"released: {size}: fetching {path} ({remote.size / 1e6:,.1f} MB), or finding it in the cache")
    failure = ""
    for attempt in range(RETRIES + 1):
        with _hub_errors(f"downloading {path}", repo, endpoint):
            local = Path(hf_hub_download(
                repo, path, repo_type=REPO_TYPE, revision=commit, cache_dir=settings["cache_dir"],
                endpoint=settings["endpoint"], force_download=attempt > 0, library_name="astropt-workflow",
            ))
        got_size, digest = _hash(local, remote)
        if got_size == remote.size and digest == remote.expected_hash:
            log(f"released: {size}: {path} verified ({remote.hash_kind} {digest}), in {local}")
            info = {
                "repo": repo, "repo_type": REPO_TYPE, "endpoint": endpoint, "revision": requested, "commit": commit,
                "file": path, "size": remote.size, remote.hash_kind: remote.expected_hash,
            }
            return local, info
        failure = (
            f"expected {remote.size} bytes with {remote.hash_kind} {remote.expected_hash}, "
            f"got {got_size} bytes with {remote.hash_kind} {digest}"
        )
        local.resolve().unlink(missing_ok=True)  # the cached blob (the snapshot entry links to it)
        if attempt < RETRIES:
            log(f"released: {path}: {failure}; deleted, downloading again ({attempt + 1}/{RETRIES})")
    raise ReleasedWeightsError(
        f"{path} from {repo} on {endpoint} failed its check {RETRIES + 1} times: {failure}; the bad copy was deleted"
    )


# --------------------------------------------------------------------------- the checkpoint


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a (v1) checkpoint with ``torch.load(weights_only=True)``, memory-mapped where possible.

    Raises:
        ValueError: If it is not a readable checkpoint dict of tensors and plain data.
    """
    from astropt.checkpoint import load_checkpoint

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file (cannot be mapped), or unreadable: load_checkpoint explains
        return load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a readable AstroPT checkpoint: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def _as_float(value: Any) -> float | None:
    """A loss stored as a float or a one-element tensor (v1), else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def convert_checkpoint(
    ckpt: dict[str, Any], size: str, provenance: dict[str, Any], source: str = "checkpoint"
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """This project's ``ckpt.pt`` dict, ``ckpt.json`` sidecar and ``metrics.csv`` table of a v1 checkpoint.

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
    out_ckpt = {
        "model": state,
        "model_args": config.to_dict(),
        "iter_num": steps,
        "best_val_loss": best if best is not None else float("nan"),
        "config": train_config,
        "released": {**provenance, "model_args": dict(ckpt["model_args"])},
    }
    if isinstance(v1_config, dict):
        out_ckpt["v1_config"] = v1_config
    val = best if best is not None else float("nan")
    sidecar = {
        "size": size,
        "params": n_params,
        "steps": steps,
        "tokens_seen": int(tokens),
        "flops": flops,
        "final_val_loss": val,
        "best_val_loss": val,
        "val_loss_note": VAL_LOSS_NOTE if best is not None else "the checkpoint has no best_val_loss",
        "elapsed_s": None,
        "gpu_hours": None,
        "peak_mem_gb": None,
        "tokens_per_s": None,
        "mfu": None,
        "device": None,
        "ranks": None,
        "model_args": config.to_dict(),
        "lr": lr,
        "train": schedule,
        "source": "released",
        "image_transpose": True,
        "released": provenance,
    }
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
    for path, write in ((out_sidecar, lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n")),
                        (out_metrics, lambda p: metrics.to_csv(p, index=False))):
        atomic_write(path, write)
    loss = sidecar["final_val_loss"]
    log(
        f"released: {size}: {sidecar['params']:,} parameters, step {sidecar['steps']:,}, "
        + (f"best val loss {loss:.5f} (used as the final one)" if np.isfinite(loss) else "no validation loss stored")
        + f"; trained on transposed images (image_transpose); wrote {out_ckpt}"
    )
    return sidecar
