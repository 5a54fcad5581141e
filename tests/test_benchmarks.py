"""Fast checks of the data-path benchmarks (benchmarks/loader_throughput.py, tokenise_throughput.py).

The scripts run end to end at tiny sizes, and the v1 reference path and this project's loader
give the same normalised X / Y for the same galaxies (what makes their speeds comparable).

Run: python -m pytest tests/test_benchmarks.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from astropt.loader import BatchGatherer
from astropt.patches import normalise, spiral_order
from astropt.shards import load_tokens
from tokens_helper import tokenise_split

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loader = _load("loader_throughput")
tokenise_bench = _load("tokenise_throughput")
reference = _load("_reference")

TINY = ["--n", "8", "--image-size", "64", "--patch-size", "16", "--repeats", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def stamps(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """8 stamps of 64x64 px tokenised with 16 px patches: (image root, token dir, id -> path)."""
    root = tmp_path_factory.mktemp("stamps")
    meta = reference.write_stamps(root, 8, 64, seed=3)
    tokenise_split(meta, root, root / "tokens", patch_size=16, image_size=64, log=lambda *a: None)
    return root, root / "tokens", dict(zip(meta["id"], meta["image_path"]))


def test_v1_spiral_rank_matches_the_facts_test_vectors():
    order4 = np.argsort(reference.v1_spiral_rank(4).ravel())
    order5 = np.argsort(reference.v1_spiral_rank(5).ravel())
    assert order4.tolist() == [9, 10, 6, 5, 4, 8, 12, 13, 14, 15, 11, 7, 3, 2, 1, 0]
    assert order5.tolist() == [12, 11, 16, 17, 18, 13, 8, 7, 6, 5, 10, 15, 20, 21, 22,
                               23, 24, 19, 14, 9, 4, 3, 2, 1, 0]
    for n in (1, 2, 3, 8, 32):
        assert np.array_equal(np.argsort(reference.v1_spiral_rank(n).ravel()), spiral_order(n))


def test_reference_normalises_each_patch_with_unbiased_std(stamps):
    root, _, id_to_path = stamps
    path = root / next(iter(id_to_path.values()))
    x = reference.reference_tokens(path, 16)  # (16, 768)
    assert x.shape == (16, 768) and x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=1), torch.ones(16), atol=1e-4, rtol=0)  # unbiased


@pytest.mark.parametrize("position", [0, 4])
def test_reference_and_loader_give_the_same_xy(stamps, position):
    root, tok_dir, id_to_path = stamps
    out = loader.compare_paths(tok_dir, root, id_to_path, patch_size=16, batch=4, seed=0,
                               position=position)
    assert out["X_ours"].shape == (4, 15, 768)
    torch.testing.assert_close(out["X_ours"], out["X_ref"])
    torch.testing.assert_close(out["Y_ours"], out["Y_ref"])
    # Y is X shifted by one token.
    torch.testing.assert_close(out["X_ours"][:, 1:], out["Y_ours"][:, :-1])


def test_loader_host_path_matches_normalise_of_the_token_rows(stamps):
    _, tok_dir, _ = stamps
    tokens = load_tokens(tok_dir).tokens  # as train.py opens its split
    idx = np.array([5, 1, 6])
    gather = BatchGatherer(tokens, 4, "cpu")
    raw = loader.ours_raw(gather, idx)
    assert raw.data_ptr() == gather.buffers[0].data_ptr()  # gathered straight into staging
    assert np.array_equal(raw.numpy(), tokens[[1, 5, 6]])  # sorted, as train.py reads them
    X, Y = loader.ours_batch(gather, idx)
    x = normalise(torch.from_numpy(np.array(tokens[[1, 5, 6]])), "patch")
    torch.testing.assert_close(X, x[:, :-1])
    torch.testing.assert_close(Y, x[:, 1:])


def test_loader_script_prints_its_table_and_ratio(tmp_path, capsys):
    res = loader.main(TINY + ["--batch", "4", "--ref-n", "4", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "check: reference and project X/Y agree" in out
    assert "reference v1" in out and "ours, host only" in out and "host + CPU normalise" in out
    assert "ratio ours/reference" in out
    assert res["reference"] > 0 and res["host"] > 0 and res["host_normalise"] > 0
    assert "os.preadv straight into staging (1 copy)" in res  # the extra rows ran


def test_tokenise_script_prints_throughput_and_sizes(tmp_path, capsys):
    (r,) = tokenise_bench.main(TINY + ["--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "images/s/core" in out and "bytes on disk per galaxy" in out
    assert r["rate"] > 0 and r["png"] > 0
    per_galaxy = 16 * 768  # T x D values
    header = 128  # .npy header bytes, spread over 8 galaxies
    assert per_galaxy <= r["uint8"] <= per_galaxy + header / 8
    assert 2 * per_galaxy <= r["float16"] <= 2 * per_galaxy + header / 8
    assert 4 * per_galaxy <= r["float32"] <= 4 * per_galaxy + header / 8
