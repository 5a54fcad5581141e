"""Shared fixtures: a tiny synthetic galaxy set, tokenised once per test session."""

from pathlib import Path

import pytest

from astropt.config import SizeSpec, TrainConfig
from astropt.model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def micro_tokens(tmp_path_factory) -> Path:
    """Token splits (train / validation / test) of 32x32 synthetic galaxies, 8px patches.

    Returns the folder holding ``train/``, ``validation/``, ``test/`` and ``metadata.parquet``.
    """
    import pandas as pd

    from astropt.synthetic import SyntheticConfig, generate
    from tokens_helper import tokenise_split

    root = tmp_path_factory.mktemp("micro")
    meta = generate(root / "galaxies", SyntheticConfig(n_train=384, n_val=64, n_test=256, image_size=32), log=lambda *a: None)
    for split in ("train", "validation", "test"):
        tokenise_split(meta[meta["split"] == split], root / "galaxies", root / split, patch_size=8, image_size=32, log=lambda *a: None)
    pd.read_parquet(root / "galaxies" / "metadata.parquet").to_parquet(root / "metadata.parquet")
    return root


@pytest.fixture
def tiny_spec() -> SizeSpec:
    """A 2-layer model for 32x32 stamps with 8px patches (16 tokens of 192 values)."""
    return SizeSpec(name="20K", model=GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=16), lr=3e-3)


@pytest.fixture
def tiny_train() -> TrainConfig:
    return TrainConfig(
        steps=40, micro_batch=16, grad_accum=1, warmup_steps=4, eval_interval=10,
        eval_galaxies=64, log_interval=5, checkpoint_interval=10, threads=1, norm="image",
    )
