"""Saving and loading AstroPT checkpoints, atomically and without running pickled code.

Checkpoint format (a ``torch.save`` dict, compatible with AstroPT v1 files):

- ``model``: the GPT state dict (keys may carry ``_orig_mod.`` / ``module.``
  prefixes from torch.compile / DDP; loading strips them);
- ``model_args``: :meth:`astropt.model.GPTConfig.to_dict` (v1: n_layer, n_head,
  n_embd, n_chan, block_size, dropout, patch_size, perhaps extra keys);
- ``optimizer``: the optimizer state dict;
- ``iter_num``: the number of optimizer steps taken;
- ``best_val_loss``: best validation loss so far (float; v1 may store a tensor);
- ``config``: the training config as a plain dict;
- optional project keys the trainer adds, e.g. ``rng`` (RNG states as tensors)
  and ``metrics``.

Every value must be loadable with ``torch.load(weights_only=True)``: tensors,
Python primitives, and dicts / lists / tuples of them. This keeps a checkpoint
from being able to run code when it is loaded.

Example::

    from astropt.checkpoint import save_checkpoint, load_model

    save_checkpoint("results/models/89M/ckpt.pt",
                    {"model": model.state_dict(), "model_args": model.config.to_dict(), ...})
    model = load_model("results/models/89M/ckpt.pt")  # GPT in eval mode
"""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from astropt.io import atomic_write
from astropt.model import GPT, GPTConfig

__all__ = ["save_checkpoint", "load_checkpoint", "clean_state_dict", "load_model"]

_PREFIXES = ("_orig_mod.", "module.")

#: Models with more weights than this are built on the meta device (see model_from_checkpoint).
META_BUILD_ABOVE = 16_000_000


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    The dict goes to a temporary file in the same directory, which is flushed,
    fsynced and then renamed over ``path``; a crash at any moment leaves either
    the old file or the complete new one, never a partial file.

    Args:
        path: Destination file; parent directories are created.
        state: The checkpoint dict (see the module docstring for its keys).
    """
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    # make the rename itself durable (best effort; not possible on every platform)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint dict with ``torch.load(weights_only=True)``.

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors (``torch.load``'s argument).
        mmap: Map the tensors from the file instead of reading them (``torch.load``'s
            argument): ranks of one node that all load the same file share its pages.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a readable checkpoint (corrupt, or it holds
            objects other than tensors and plain Python data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise ValueError(
            f"{path} is not a readable AstroPT checkpoint (loaded with weights_only=True, "
            f"so only tensors and plain Python data are allowed): {e}"
        ) from e
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} is not a readable AstroPT checkpoint: expected a dict, "
            f"got {type(ckpt).__name__}"
        )
    return ckpt


def clean_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """Strip torch.compile (``_orig_mod.``) and DDP (``module.``) prefixes from keys.

    Prefixes are removed from the start of each key repeatedly, in any order
    (e.g. ``module._orig_mod.lm_head.0.weight`` -> ``lm_head.0.weight``).
    """
    out = {}
    for key, value in sd.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]  # each prefix is one dotted segment
        out[key] = value
    return out


def load_model(path: str | os.PathLike) -> GPT:
    """Build a :class:`~astropt.model.GPT` from a checkpoint of this project or AstroPT v1.

    Only ``model_args`` and ``model`` are used; optimizer state, step count and
    config are ignored.

    Args:
        path: The checkpoint file.

    Returns:
        The model with the checkpoint's weights, in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is unreadable, lacks ``model_args`` / ``model``, or
            its weights do not fit the model its ``model_args`` describe.
    """
    return model_from_checkpoint(load_checkpoint(path), source=path)


def model_from_checkpoint(ckpt: dict, source: str | os.PathLike = "checkpoint") -> GPT:
    """Build the model of an already loaded checkpoint dict (see :func:`load_model`).

    Args:
        ckpt: The dict :func:`load_checkpoint` returned.
        source: Where it came from, for error messages.
    """
    for key in ("model_args", "model"):
        if key not in ckpt:
            raise ValueError(
                f"{source} has no '{key}' entry, so it is not an AstroPT model checkpoint "
                f"(keys found: {sorted(ckpt)})"
            )
    if not isinstance(ckpt["model_args"], dict):
        raise ValueError(f"{source}: 'model_args' must be a dict, got {type(ckpt['model_args'])}")
    config = GPTConfig.from_dict(ckpt["model_args"])
    # Build, then adopt the loaded tensors as the parameters (they already sit where
    # map_location put them). A large model is built on the meta device, without memory or
    # random init; a small one on the CPU, because the meta device's init imports
    # torch._dynamo (about 1.5 s per job) while a CPU init of a few million weights takes
    # milliseconds. The CPU init draws from a forked RNG, so the caller's stream is untouched.
    n_weights = sum(t.numel() for t in ckpt["model"].values() if isinstance(t, torch.Tensor))
    if n_weights > META_BUILD_ABOVE:
        with torch.device("meta"):
            model = GPT(config)
    else:
        with torch.random.fork_rng(devices=[]):
            model = GPT(config)
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]), strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(
            f"{source}: weights don't match the model its model_args describe ({config}): {e}"
        ) from e
    return model.eval()
