"""Test-only helpers: token splits on disk, written the way the workflow writes them.

The workflow runs one ``tokenise`` job per shard group and a ``token_index`` job to join
them (:func:`astropt.tokenise.tokenise_group`, :func:`astropt.tokenise.merge_token_groups`);
tests want a split's tokens from one keyword call with the tokeniser's defaults
(:func:`tokenise_split`), or given token arrays stored as shards and opened by
:func:`astropt.shards.load_tokens`, as training opens them (:func:`token_split`).

    from tokens_helper import tokenise_split, token_split
    tokenise_split(meta, root, tmp_path / "train", patch_size=8, image_size=32)
    split = token_split(tmp_path / "t", [rows_a, rows_b])   # split.tokens: ShardedTokens
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from astropt.shards import ShardWriter, TokenSplit, load_tokens, shard_stem
from astropt.tokenise import TokeniseSettings, merge_token_groups, tokenise_group


def tokenise_split(
    metadata: pd.DataFrame,
    image_root: Path,
    out_dir: Path,
    patch_size: int,
    image_size: int | None = None,
    workers: int = 1,
    log: Callable[[str], Any] = print,
    max_reject_fraction: float = 0.5,
    chunk_size: int = 256,
    split: str = "",
    **settings: Any,
) -> dict[str, Any]:
    """:func:`tokenise_group` as job 0 of 1, then :func:`merge_token_groups`; returns the
    split's ``meta.json`` contents (settings, shards and counts).

    ``settings``: the other fields of :class:`TokeniseSettings` (``n_chan``, ``fit``, ``nan``,
    ``dtype``, ``shard_size``, ``image_column``).
    """
    tokenise_group(
        metadata, image_root, out_dir, TokeniseSettings(patch_size, image_size, **settings),
        workers=workers, max_reject_fraction=max_reject_fraction, chunk_size=chunk_size, split=split, log=log,
    )
    return merge_token_groups(out_dir, 1, max_reject_fraction, log=log)


def write_shards(shard_dir: Path, shards: list[np.ndarray]) -> list[Path]:
    """Each ``(n_k, T, D)`` array as token shard ``k`` of ``shard_dir``, written by the
    tokenise jobs' :class:`astropt.shards.ShardWriter` in the array's own dtype (galaxy ids
    ``"{k}-{i}"``); returns the ``.npy`` paths."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, a in enumerate(shards):
        with ShardWriter(shard_dir, a.shape[1:], a.dtype) as writer:
            writer.start(k, len(a), "test", ())
            writer.add(a)
            writer.record["ids"] += [f"{k}-{i}" for i in range(len(a))]
            writer.finish()
        paths.append(shard_dir / f"{shard_stem(k)}.npy")
    return paths


def token_split(out_dir: Path, shards: list[np.ndarray]) -> TokenSplit:
    """A split holding ``shards`` (``(n_k, T, D)`` arrays of one dtype, shard ``k``'s rows
    after shard ``k-1``'s), opened by :func:`astropt.shards.load_tokens`.

    The shards are written by :func:`write_shards`; ``index.parquet`` and ``meta.json`` list
    them as :func:`astropt.tokenise.merge_token_groups` would.
    """
    out_dir = Path(out_dir)
    paths = write_shards(out_dir / "shards", shards)
    first = shards[0]
    index = pd.DataFrame({
        "id": [f"{k}-{i}" for k, a in enumerate(shards) for i in range(len(a))],
        "split": "",
        "shard": np.repeat(np.arange(len(shards)), [len(a) for a in shards]),
        "row": np.concatenate([np.arange(len(a)) for a in shards]),
    })
    index.to_parquet(out_dir / "index.parquet", index=False)
    meta = {"n_tokens": first.shape[1], "token_dim": first.shape[2], "dtype": first.dtype.name,
            "shards": [{"file": str(p.relative_to(out_dir)), "n": len(a)} for p, a in zip(paths, shards)]}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return load_tokens(out_dir)
