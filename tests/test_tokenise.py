"""Tests of patch tokenisation (astropt/tokenise.py).

Run: python -m pytest tests/test_tokenise.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from astropt.tokenise import (
    image_to_tokens,
    load_tokens,
    normalise,
    patchify,
    spiral_order,
    tokenise_split,
    tokens_to_image,
    unpatchify,
)


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Spiral order
# ---------------------------------------------------------------------------------------------
def test_spiral_vectors():
    assert spiral_order(4).tolist() == [9, 10, 6, 5, 4, 8, 12, 13, 14, 15, 11, 7, 3, 2, 1, 0]
    assert spiral_order(5).tolist() == [
        12, 11, 16, 17, 18, 13, 8, 7, 6, 5, 10, 15, 20, 21, 22, 23, 24, 19, 14, 9, 4, 3, 2, 1, 0,
    ]
    assert spiral_order(4).dtype == np.int64


def _v1_spiral_ranks(n: int) -> np.ndarray:
    """AstroPT v1's outside-in walk turned into ranks, as a reference."""
    walk, grid = [], np.arange(n * n).reshape(n, n)
    while grid.size:
        walk += list(grid[0, :]) + list(grid[1:, -1]) + list(grid[-1, :-1][::-1]) + list(grid[1:-1, 0][::-1])
        grid = grid[1:-1, 1:-1]
    ranks = np.empty(n * n, np.int64)
    ranks[np.array(walk)] = n * n - 1 - np.arange(n * n)
    return ranks


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 8, 16, 32])
def test_spiral_is_centre_out_permutation(n):
    order = spiral_order(n)
    assert sorted(order.tolist()) == list(range(n * n))
    np.testing.assert_array_equal(order, np.argsort(_v1_spiral_ranks(n)))
    if n % 2:
        assert order[0] == (n // 2) * n + n // 2  # the centre patch
    assert order[-1] == 0  # ends at the top-left corner
    # Each ring of the spiral stays within its Chebyshev distance from the centre.
    rows, cols = np.divmod(order, n)
    c = (n - 1) / 2
    dist = np.maximum(np.abs(rows - c), np.abs(cols - c))
    assert np.all(np.diff(dist) >= 0)


def test_spiral_is_cached_and_read_only():
    assert spiral_order(8) is spiral_order(8)
    with pytest.raises(ValueError):
        spiral_order(8)[0] = 1
    with pytest.raises(ValueError):
        spiral_order(0)


# ---------------------------------------------------------------------------------------------
# Patchify
# ---------------------------------------------------------------------------------------------
def test_patch_layout_channel_fastest():
    img = np.arange(8 * 12 * 3).reshape(8, 12, 3)  # value = (row * W + col) * C + chan
    tok = patchify(img, 4)
    assert tok.shape == (6, 48)
    np.testing.assert_array_equal(tok[0, :3], img[0, 0])  # pixel (0, 0), channels 0..2
    np.testing.assert_array_equal(tok[0, 3:6], img[0, 1])  # then the next column
    np.testing.assert_array_equal(tok[0, 12:15], img[1, 0])  # a patch row later: next row
    np.testing.assert_array_equal(tok[1].reshape(4, 4, 3), img[0:4, 4:8])  # raster patch order
    np.testing.assert_array_equal(tok[3].reshape(4, 4, 3), img[4:8, 0:4])


def test_patchify_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)  # non-square 2x3 grid
    tok = patchify(batch, 8)
    assert tok.shape == (5, 6, 192) and tok.dtype == np.uint8
    np.testing.assert_array_equal(unpatchify(tok, 8, grid=(2, 3)), batch)
    np.testing.assert_array_equal(patchify(batch[2], 8), tok[2])
    t = patchify(torch.from_numpy(batch), 8)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), tok)
    np.testing.assert_array_equal(unpatchify(t, 8, grid=(2, 3)).numpy(), batch)
    square = rng.random((32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(unpatchify(patchify(square, 8), 8, n_chan=1), square)


def test_patchify_errors():
    with pytest.raises(ValueError, match=r"height \(30\).*patch size \(8\)"):
        patchify(np.zeros((30, 32, 3)), 8)
    with pytest.raises(ValueError, match="expects"):
        patchify(np.zeros((32, 32)), 8)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(np.zeros((6, 192)), 8)


def test_spiral_tokens_round_trip():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tok = image_to_tokens(img, 8)
    assert tok.shape == (64, 192)
    np.testing.assert_array_equal(tok, patchify(img, 8)[spiral_order(8)])
    np.testing.assert_array_equal(tokens_to_image(tok, 8), img)
    batch = np.stack([img, img[::-1]])
    np.testing.assert_array_equal(tokens_to_image(image_to_tokens(batch, 8), 8), batch)
    t = image_to_tokens(torch.from_numpy(img), 8)
    np.testing.assert_array_equal(t.numpy(), tok)
    np.testing.assert_array_equal(tokens_to_image(t, 8).numpy(), img)
    # Token 0 of a 4x4 grid is raster patch 9 (patch row 2, column 1): pixels [16:24, 8:16].
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_tokens(small, 8)[0].reshape(8, 8, 3), small[16:24, 8:16])


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
def test_normalise_modes():
    x = torch.randint(0, 256, (4, 10, 48), dtype=torch.uint8)
    p = normalise(x, "patch")
    assert p.dtype == torch.float32 and p.shape == x.shape
    torch.testing.assert_close(p.mean(-1), torch.zeros(4, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.std(-1), torch.ones(4, 10), atol=1e-4, rtol=0)
    im = normalise(x, "image")
    torch.testing.assert_close(im.mean((-2, -1)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(im.std((-2, -1)), torch.ones(4), atol=1e-4, rtol=0)
    assert im[0].mean(-1).abs().max() > 1e-3  # patches are not standardised one by one
    # Faithful to v1: unbiased std, eps added to the std.
    xf = x.float()
    ref = (xf - xf.mean(-1, keepdim=True)) / (xf.std(-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(p, ref)
    flat = torch.full((1, 2, 12), 7, dtype=torch.uint8)
    assert torch.all(normalise(flat, "patch") == 0)
    with pytest.raises(ValueError, match="mode"):
        normalise(x, "pixel")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# tokenise_split
# ---------------------------------------------------------------------------------------------
BAD = {"g012": "unreadable", "g013": "unreadable", "g014": "wrong size", "g015": "missing file"}


@pytest.fixture
def folder(tmp_path) -> tuple[Path, pd.DataFrame, dict[str, np.ndarray]]:
    """12 good 32x32 PNGs, a truncated PNG, a garbage .png, a 24x24 image and a missing file."""
    root = tmp_path / "galaxies"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = {}
    ids, paths = [], []
    for i in range(16):
        gid, rel = f"g{i:03d}", f"images/g{i:03d}.png"
        ids.append(gid)
        paths.append(rel)
        if i < 12:
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            if i == 5:  # a greyscale image converts to RGB
                img = np.repeat(img[..., :1], 3, axis=-1)
                Image.fromarray(img[..., 0], mode="L").save(root / rel)
            else:
                Image.fromarray(img).save(root / rel)
            good[gid] = img
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "x.png")
    data = (root / "x.png").read_bytes()
    (root / paths[12]).write_bytes(data[: len(data) // 2])  # truncated
    (root / paths[13]).write_bytes(b"this is not a png" * 20)  # garbage
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / paths[14])
    meta = pd.DataFrame({"id": ids, "image_path": paths, "split": "train"})
    return root, meta, good


def test_tokenise_split_outputs(folder, tmp_path):
    root, meta, good = folder
    lines: list[str] = []
    counts = tokenise_split(meta, root, tmp_path / "out", patch_size=8, image_size=32, log=lines.append)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["index.parquet", "meta.json", "rejected.csv", "tokens.npy"]
    assert counts["n_galaxies"] == 12 and counts["n_rejected"] == 4
    assert counts["n_unreadable"] == 2 and counts["n_missing"] == 1 and counts["n_wrong_size"] == 1
    assert "2 unreadable images skipped" in lines[-1]

    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns) == ["id", "image_path", "reason"]
    assert dict(zip(rejected["id"], rejected["reason"].str.split(":").str[0])) == BAD
    assert "24x24" in rejected.set_index("id").loc["g014", "reason"]

    tokens = np.load(out / "tokens.npy", mmap_mode="r")
    assert tokens.shape == (12, 16, 192) and tokens.dtype == np.uint8
    index = pd.read_parquet(out / "index.parquet")
    assert list(index.columns) == ["id", "row"] and list(index["row"]) == list(range(12))
    for gid, row in zip(index["id"], index["row"]):
        np.testing.assert_array_equal(tokens[row], image_to_tokens(good[gid], 8))

    meta_json = json.loads((out / "meta.json").read_text())
    assert {k: meta_json[k] for k in ("patch_size", "image_size", "n_chan", "n_tokens", "token_dim")} == {
        "patch_size": 8, "image_size": 32, "n_chan": 3, "n_tokens": 16, "token_dim": 192,
    }
    assert meta_json["order"] == "spiral" and meta_json["n_galaxies"] == 12 and meta_json["n_rejected"] == 4

    split = load_tokens(out)
    assert len(split) == 12 and isinstance(split.tokens, np.memmap)
    assert split.ids.tolist() == [f"g{i:03d}" for i in range(12)]
    np.testing.assert_array_equal(split.tokens, tokens)


def test_tokenise_split_workers_and_inferred_size(folder, tmp_path):
    root, meta, _ = folder
    tokenise_split(meta, root, tmp_path / "w1", patch_size=8, log=_quiet, chunk_size=5)
    tokenise_split(meta, root, tmp_path / "w2", patch_size=8, workers=2, log=_quiet, chunk_size=5)
    for name in ("tokens.npy", "rejected.csv", "meta.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "w1" / "index.parquet"), pd.read_parquet(tmp_path / "w2" / "index.parquet")
    )
    assert json.loads((tmp_path / "w1" / "meta.json").read_text())["image_size"] == 32  # inferred


def test_tokenise_split_no_rejects_and_too_many(folder, tmp_path):
    root, meta, _ = folder
    counts = tokenise_split(meta.iloc[:12], root, tmp_path / "ok", patch_size=8, image_size=32, log=_quiet)
    assert counts["n_rejected"] == 0
    assert pd.read_csv(tmp_path / "ok" / "rejected.csv").empty
    assert (tmp_path / "ok" / "rejected.csv").read_text().strip() == "id,image_path,reason"

    bad = meta.iloc[[0, 12, 13, 14, 15]]
    with pytest.raises(RuntimeError, match=r"4 of 5 .*g012"):
        tokenise_split(bad, root, tmp_path / "bad", patch_size=8, image_size=32, log=_quiet)
    assert not any((tmp_path / "bad").iterdir())  # nothing half-written left behind


def test_tokenise_split_input_errors(folder, tmp_path):
    root, meta, _ = folder
    with pytest.raises(ValueError, match="image_path"):
        tokenise_split(meta[["id"]], root, tmp_path / "x", patch_size=8, log=_quiet)
    with pytest.raises(ValueError, match="duplicate"):
        tokenise_split(pd.concat([meta, meta.iloc[:1]]), root, tmp_path / "x", patch_size=8, log=_quiet)
    with pytest.raises(ValueError, match="divisible"):
        tokenise_split(meta, root, tmp_path / "x", patch_size=7, log=_quiet)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokens(tmp_path / "nowhere")


def test_shrink_fallback_copies_rows(tmp_path):
    from astropt.tokenise import _copy_rows

    path = tmp_path / "t.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2500, 2, 3))
    arr[:] = np.arange(arr.size).reshape(arr.shape) % 251
    ref = np.array(arr[:2100])
    del arr
    _copy_rows(path, (2100, 2, 3), np.uint8)
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), ref)


# ---------------------------------------------------------------------------------------------
# tokenise_split: storage dtypes, FITS, band counts
# ---------------------------------------------------------------------------------------------
def test_default_uint8_path_unchanged(folder, tmp_path):
    """Defaults write exactly the uint8 array np.save would write for image_to_tokens."""
    root, meta, good = folder
    ok = meta.iloc[:12]
    tokenise_split(ok, root, tmp_path / "d", patch_size=8, image_size=32, log=_quiet)
    tokenise_split(
        ok, root, tmp_path / "e", patch_size=8, image_size=32, log=_quiet,
        n_chan=3, fit="reject", nan="reject", dtype="uint8",
    )
    expected = np.stack([image_to_tokens(good[g], 8) for g in ok["id"]])
    np.save(tmp_path / "expected.npy", expected)
    data = (tmp_path / "d" / "tokens.npy").read_bytes()
    assert data == (tmp_path / "expected.npy").read_bytes()
    assert data == (tmp_path / "e" / "tokens.npy").read_bytes()
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["dtype"] == "uint8"
    # The same PNGs stored as float keep their 0-255 values.
    tokenise_split(ok, root, tmp_path / "f", patch_size=8, image_size=32, log=_quiet, dtype="float16")
    f16 = load_tokens(tmp_path / "f")
    assert f16.tokens.dtype == np.float16 and f16.meta["dtype"] == "float16"
    np.testing.assert_array_equal(f16.tokens, expected.astype(np.float16))
    torch.testing.assert_close(normalise(torch.from_numpy(np.array(f16.tokens))), normalise(torch.from_numpy(expected)))


def _fits_folder(tmp_path: Path, stamps: dict[str, np.ndarray]) -> tuple[Path, pd.DataFrame]:
    from astropy.io import fits

    root = tmp_path / "fits"
    root.mkdir()
    for gid, data in stamps.items():
        fits.PrimaryHDU(data).writeto(root / f"{gid}.fits")
    return root, pd.DataFrame({"id": list(stamps), "image_path": [f"{g}.fits" for g in stamps]})


def test_fits_float16_overflow_and_nan_zero(tmp_path):
    pytest.importorskip("astropy")
    rng = np.random.default_rng(2)
    cube = rng.normal(0, 1000, (3, 16, 16)).astype(np.float32)
    hot = cube.copy()
    hot[1, 3, 4] = 1e5  # beyond float16's 65504
    holes = cube.copy()
    holes[0, :2, :] = np.nan
    holes[2, 5, 5] = np.inf
    root, meta = _fits_folder(tmp_path, {"ok": cube, "hot": hot, "holes": holes})

    counts = tokenise_split(meta, root, tmp_path / "h", patch_size=8, dtype="float16", max_reject_fraction=1, log=_quiet)
    rej = pd.read_csv(tmp_path / "h" / "rejected.csv").set_index("id")["reason"].to_dict()
    assert rej["hot"].startswith("values exceed float16 range")
    assert rej["holes"] == "NaN pixels: 32, infinite pixels: 1"
    assert counts["n_out_of_range"] == 1 and counts["n_nan"] == 1
    split = load_tokens(tmp_path / "h")
    assert split.ids.tolist() == ["ok"] and split.tokens.dtype == np.float16
    np.testing.assert_array_equal(split.tokens[0], image_to_tokens(cube.transpose(1, 2, 0), 8).astype(np.float16))

    counts = tokenise_split(meta, root, tmp_path / "z", patch_size=8, nan="zero", log=_quiet)
    split = load_tokens(tmp_path / "z")
    assert counts["n_nan_zeroed"] == 1 and split.ids.tolist() == ["ok", "hot", "holes"]
    assert split.tokens.dtype == np.float32 and split.meta["dtype"] == "float32"  # auto: FITS
    fixed = np.where(np.isfinite(holes), holes, 0).transpose(1, 2, 0)
    np.testing.assert_array_equal(split.tokens[2], image_to_tokens(fixed, 8))
    np.testing.assert_array_equal(split.tokens[1], image_to_tokens(hot.transpose(1, 2, 0), 8))  # fine in float32

    counts = tokenise_split(
        meta.iloc[:1], root, tmp_path / "u", patch_size=8, image_size=16, dtype="uint8", max_reject_fraction=1, log=_quiet
    )
    assert counts["n_out_of_range"] == 1  # float data does not fit uint8
    assert "values do not fit uint8" in pd.read_csv(tmp_path / "u" / "rejected.csv")["reason"][0]


def test_one_band_fits_and_greyscale(tmp_path):
    pytest.importorskip("astropy")
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, (32, 32)).astype(np.float32)
    root, meta = _fits_folder(tmp_path, {"f1": img, "f3": rng.normal(0, 1, (3, 32, 32)).astype(np.float32)})
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "g.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "rgb.png")
    meta = pd.concat([meta, pd.DataFrame({"id": ["g", "rgb"], "image_path": ["g.png", "rgb.png"]})])

    counts = tokenise_split(meta, root, tmp_path / "o", patch_size=8, n_chan=1, log=_quiet)
    split = load_tokens(tmp_path / "o")
    assert split.ids.tolist() == ["f1", "g"] and split.tokens.shape == (2, 16, 64)
    assert split.meta["n_chan"] == 1 and split.meta["token_dim"] == 64 and counts["n_wrong_bands"] == 2
    np.testing.assert_array_equal(split.tokens[0], image_to_tokens(img[..., None], 8))
    np.testing.assert_array_equal(split.tokens[1], image_to_tokens(grey[..., None].astype(np.float32), 8))
    rej = pd.read_csv(tmp_path / "o" / "rejected.csv").set_index("id")["reason"].to_dict()
    assert rej == {"f3": "unexpected band count: 3 (expected 1)", "rgb": "unexpected band count: 3 (expected 1)"}


def test_sixteen_bit_png_and_bad_options(folder, tmp_path):
    root, meta, _ = folder
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(root / "deep.png")
    deep = pd.concat([meta.iloc[:2], pd.DataFrame({"id": ["deep"], "image_path": ["deep.png"]})])
    tokenise_split(deep, root, tmp_path / "o", patch_size=8, image_size=32, log=_quiet)
    reason = pd.read_csv(tmp_path / "o" / "rejected.csv")["reason"][0]
    assert reason.startswith("unsupported pixel format") and "not 8-bit" in reason
    with pytest.raises(ValueError, match="fit must be one of"):
        tokenise_split(meta, root, tmp_path / "x", patch_size=8, fit="pad", log=_quiet)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype must be one of"):
        tokenise_split(meta, root, tmp_path / "x", patch_size=8, dtype="int16", log=_quiet)  # type: ignore[arg-type]
