"""Test-only helper: tokenise a whole split in one call (one tokenise job, then its index).

The workflow runs one ``tokenise`` job per shard group and a ``token_index`` job to join
them (:func:`astropt.tokenise.tokenise_group`, :func:`astropt.tokenise.merge_token_groups`);
tests want a split's tokens from one keyword call with the tokeniser's defaults.

    from tokens_helper import tokenise_split
    tokenise_split(meta, root, tmp_path / "train", patch_size=8, image_size=32)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

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
