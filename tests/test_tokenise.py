"""Tests of patch tokenisation: the patch maths (astropt/patches.py), the token shards
(astropt/shards.py) and the tokenise jobs (astropt/tokenise.py).

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

from astropt.patches import image_to_tokens, normalise, patchify, spiral_order, tokens_to_image, unpatchify
from astropt.shards import ShardedTokens, load_tokens, parse_part_name, part_name
from astropt.tokenise import TokeniseSettings, collect_rejected, merge_token_groups, tokenise_group, tokenise_part
from tokens_helper import token_split, tokenise_split, write_shards


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
# Tokenising a split (tokens_helper.tokenise_split: one job, then the index)
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
    assert names == ["index.parquet", "meta.json", "parts", "rejected.csv", "shards"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.json", "00000.npy"]
    assert counts["n_galaxies"] == 12 and counts["n_rejected"] == 4
    assert counts["n_unreadable"] == 2 and counts["n_missing"] == 1 and counts["n_wrong_size"] == 1
    assert any("2 unreadable images skipped" in line for line in lines)
    assert "4 rejected" in lines[-1]

    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns) == ["id", "image_path", "reason"]
    assert dict(zip(rejected["id"], rejected["reason"].str.split(":").str[0])) == BAD
    assert "24x24" in rejected.set_index("id").loc["g014", "reason"]

    tokens = np.load(out / "shards/00000.npy", mmap_mode="r")
    assert tokens.shape == (12, 16, 192) and tokens.dtype == np.uint8
    index = pd.read_parquet(out / "index.parquet")
    assert list(index.columns) == ["id", "split", "shard", "row"] and list(index["row"]) == list(range(12))
    assert set(index["shard"]) == {0}
    for gid, row in zip(index["id"], index["row"]):
        np.testing.assert_array_equal(tokens[row], image_to_tokens(good[gid], 8))

    meta_json = json.loads((out / "meta.json").read_text())
    assert {k: meta_json[k] for k in ("patch_size", "image_size", "n_chan", "n_tokens", "token_dim")} == {
        "patch_size": 8, "image_size": 32, "n_chan": 3, "n_tokens": 16, "token_dim": 192,
    }
    assert meta_json["order"] == "spiral" and meta_json["n_galaxies"] == 12 and meta_json["n_rejected"] == 4

    split = load_tokens(out)
    assert len(split) == 12 and isinstance(split.tokens, ShardedTokens)
    assert split.ids.tolist() == [f"g{i:03d}" for i in range(12)]
    np.testing.assert_array_equal(np.asarray(split.tokens), tokens)


def test_tokenise_split_workers_and_inferred_size(folder, tmp_path):
    root, meta, _ = folder
    tokenise_split(meta, root, tmp_path / "w1", patch_size=8, log=_quiet, chunk_size=5)
    tokenise_split(meta, root, tmp_path / "w2", patch_size=8, workers=2, log=_quiet, chunk_size=5)
    for name in ("shards/00000.npy", "rejected.csv", "meta.json"):
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
    # No index or part claims success; the finished shard stays (a rerun with a lower bar
    # reuses it) and nothing half-written is left behind.
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["shards"]
    assert sorted(p.name for p in (tmp_path / "bad" / "shards").iterdir()) == ["00000.json", "00000.npy"]


def test_tokenise_split_input_errors(folder, tmp_path):
    root, meta, _ = folder
    with pytest.raises(ValueError, match="image_path"):
        tokenise_split(meta[["id"]], root, tmp_path / "x", patch_size=8, log=_quiet)
    with pytest.raises(ValueError, match="divisible"):
        tokenise_split(meta, root, tmp_path / "x", patch_size=7, log=_quiet)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokens(tmp_path / "nowhere")


def test_shrink_fallback_copies_rows(tmp_path):
    from astropt.shards import _copy_rows

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
    data = (tmp_path / "d" / "shards/00000.npy").read_bytes()
    assert data == (tmp_path / "expected.npy").read_bytes()
    assert data == (tmp_path / "e" / "shards/00000.npy").read_bytes()
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["dtype"] == "uint8"
    # The same PNGs stored as float keep their 0-255 values.
    tokenise_split(ok, root, tmp_path / "f", patch_size=8, image_size=32, log=_quiet, dtype="float16")
    f16 = load_tokens(tmp_path / "f")
    assert f16.tokens.dtype == np.float16 and f16.meta["dtype"] == "float16"
    np.testing.assert_array_equal(np.asarray(f16.tokens), expected.astype(np.float16))
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


# ---------------------------------------------------------------------------------------------
# Shards: groups, duplicates, resuming, the sharded view
# ---------------------------------------------------------------------------------------------
def test_duplicate_ids_are_rejected_not_fatal(folder, tmp_path):
    root, meta, good = folder
    twice = pd.concat([meta.iloc[:3], meta.iloc[[1]].assign(image_path=meta["image_path"][4])], ignore_index=True)
    counts = tokenise_split(twice, root, tmp_path / "d", patch_size=8, image_size=32, log=_quiet)
    assert counts["n_galaxies"] == 3 and counts["n_duplicate"] == 1
    rej = pd.read_csv(tmp_path / "d" / "rejected.csv")
    assert rej.to_dict("records") == [
        {"id": "g001", "image_path": "images/g004.png", "reason": "duplicate id (first at catalogue row 1 of the split)"}
    ]
    split = load_tokens(tmp_path / "d")
    assert split.ids.tolist() == ["g000", "g001", "g002"]
    np.testing.assert_array_equal(split.tokens[1], image_to_tokens(good["g001"], 8))  # the first one kept


@pytest.mark.parametrize("workers", [1, 2])
def test_groups_and_shard_sizes_give_the_same_split(folder, tmp_path, workers):
    root, meta, _ = folder
    kw = dict(patch_size=8, image_size=32, log=_quiet, max_reject_fraction=1)
    whole = tokenise_split(meta, root, tmp_path / "one", shard_size=100, **kw)
    out = tmp_path / "three"
    run = dict(log=_quiet, max_reject_fraction=1)
    for g in (2, 0, 1):  # any order, as independent jobs
        tokenise_group(meta, root, out, TokeniseSettings(8, 32, shard_size=3), group=g, groups=3, workers=workers,
                       chunk_size=2, split="train", **run)
    merged = merge_token_groups(out, 3, max_reject_fraction=1, log=_quiet)
    assert len(merged["shards"]) == 6 and merged["groups"] == 3  # 16 rows / 3 per shard
    assert {k: merged[k] for k in whole if k.startswith("n_") and k != "n_shards"} == {
        k: whole[k] for k in whole if k.startswith("n_") and k != "n_shards"
    }
    a, b = load_tokens(tmp_path / "one"), load_tokens(out)
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    index = pd.read_parquet(out / "index.parquet")
    assert index["split"].eq("train").all() and index["shard"].is_monotonic_increasing
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "rejected.csv"), pd.read_csv(out / "rejected.csv"))
    # An empty group (more jobs than shards) is fine.
    tokenise_group(meta.iloc[:2], root, tmp_path / "few", TokeniseSettings(8, 32, shard_size=8), group=1, groups=2, **run)
    tokenise_group(meta.iloc[:2], root, tmp_path / "few", TokeniseSettings(8, 32, shard_size=8), group=0, groups=2, **run)
    assert merge_token_groups(tmp_path / "few", 2, log=_quiet)["n_galaxies"] == 2


def test_merge_refuses_missing_or_mismatched_parts(folder, tmp_path):
    root, meta, _ = folder
    settings, kw = TokeniseSettings(8, 32, shard_size=4), dict(log=_quiet, max_reject_fraction=1)
    out = tmp_path / "t"
    tokenise_group(meta, root, out, settings, group=0, groups=2, **kw)
    with pytest.raises(FileNotFoundError, match=part_name(1, 2)):
        merge_token_groups(out, 2, log=_quiet)
    tokenise_group(meta, root, out, TokeniseSettings(8, 32, shard_size=4, fit="resize"), group=1, groups=2, **kw)
    with pytest.raises(ValueError, match="other settings.*fit"):
        merge_token_groups(out, 2, log=_quiet)
    tokenise_group(meta, root, out, settings, group=1, groups=2, **kw)
    (out / "shards" / "00003.npy").unlink()
    with pytest.raises(FileNotFoundError, match="00003.npy"):
        merge_token_groups(out, 2, log=_quiet)


def test_interrupted_job_keeps_finished_shards(folder, tmp_path, monkeypatch):
    import astropt.tokenise as tk

    root, meta, _ = folder
    kw = dict(patch_size=8, image_size=32, max_reject_fraction=1, shard_size=4, chunk_size=2)
    clean = tmp_path / "clean"
    tokenise_split(meta, root, clean, log=_quiet, **kw)

    calls = []
    real = tk._tokenise_chunk

    def dies_on_fifth(*args):
        calls.append(len(args[1]))
        if len(calls) == 5:  # inside shard 2: shards 0 and 1 are done
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "run"
    monkeypatch.setattr(tk, "_tokenise_chunk", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        tokenise_split(meta, root, out, log=_quiet, **kw)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.json", "00000.npy", "00001.json", "00001.npy"]
    assert not (out / "index.parquet").exists()

    calls.clear()
    lines: list[str] = []
    monkeypatch.setattr(tk, "_tokenise_chunk", real)
    monkeypatch.setattr(tk, "_tokenise_chunk", lambda *a: (calls.append(len(a[1])), real(*a))[1])
    counts = tokenise_split(meta, root, out, log=lines.append, **kw)
    assert sum(calls) == 8  # only shards 2 and 3 were read again
    assert counts["n_reused"] == 2 and any("reusing 2 shard(s)" in line for line in lines)
    for name in ("rejected.csv", "index.parquet", *(f"shards/{k:05d}.npy" for k in range(4))):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name

    # A changed stamp makes its shard be read again; other settings make every shard be.
    calls.clear()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / meta["image_path"][5])
    tokenise_split(meta, root, out, log=_quiet, **kw)
    assert sum(calls) == 4
    assert np.asarray(load_tokens(out).tokens[5]).max() == 0
    calls.clear()
    tokenise_split(meta, root, out, log=_quiet, **{**kw, "patch_size": 16})
    assert sum(calls) == 16


def test_killed_tokenise_process_resumes(tmp_path):
    """SIGKILL mid-run (no cleanup at all), then rerun: finished shards are reused."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "img"
    root.mkdir()
    rng = np.random.default_rng(1)
    n = 240
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
    pd.DataFrame({"id": [str(i) for i in range(n)], "image_path": [f"{i}.png" for i in range(n)]}).to_parquet(
        tmp_path / "cat.parquet"
    )
    code = (
        "import sys, time, pandas as pd, astropt.tokenise as tk\n"
        "from tokens_helper import tokenise_split\n"
        "real = tk._tokenise_chunk\n"
        "def slow(*a):\n    time.sleep(float(sys.argv[2]))\n    return real(*a)\n"
        "tk._tokenise_chunk = slow\n"
        f"tokenise_split(pd.read_parquet({str(tmp_path / 'cat.parquet')!r}), {str(root)!r}, sys.argv[1], "
        "patch_size=8, image_size=64, shard_size=20, chunk_size=10, log=print)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (Path(__file__).resolve().parents[1], Path(__file__).parent))}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), "0.05"], env=env)
    deadline = time.time() + 600  # the child imports torch first: minutes on a loaded machine
    # Killed in the middle of a shard (its temporary file exists), after at least 3 finished.
    while time.time() < deadline and not (
        len(list((out / "shards").glob("*.json"))) >= 3 and list((out / "shards").glob("*.tmp-*"))
    ):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "shards").glob("*.json")))
    assert 3 <= done_before < 12
    res = subprocess.run([sys.executable, "-c", code, str(out), "0"], env=env, capture_output=True, text=True, check=True)
    assert f"reusing {done_before} shard(s)" in res.stdout
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "clean"), "0"], env=env, capture_output=True, check=True)
    a, b = load_tokens(out), load_tokens(tmp_path / "clean")
    assert a.ids.tolist() == b.ids.tolist() and len(a) == n
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not list(out.rglob("*.tmp-*"))  # the killed run's temporary file was swept


def test_sharded_tokens_indexing(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 255, (n, 4, 3), dtype=np.uint8) for n in (3, 0, 5, 2)]
    whole = np.concatenate(parts)
    st = token_split(tmp_path / "t", parts).tokens
    assert st.shape == (10, 4, 3) and len(st) == 10 and st.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(st), whole)
    for key in (0, 3, 9, -1, slice(2, 7), slice(3, 8), slice(None, None, 3), slice(5, 5)):
        np.testing.assert_array_equal(st[key], whole[key], err_msg=str(key))
    np.testing.assert_array_equal(st[2:9, :2], whole[2:9, :2])
    np.testing.assert_array_equal(st[4, 1:], whole[4, 1:])
    rows = np.array([9, 0, 4, 4, 3, 2])
    np.testing.assert_array_equal(st[rows], whole[rows])  # unsorted, repeated
    out = np.empty((4, 4, 3), np.uint8)
    assert st.take(np.array([1, 2, 3, 8]), out=out) is out
    np.testing.assert_array_equal(out, whole[[1, 2, 3, 8]])
    np.testing.assert_array_equal(st[np.array([-1, -10, 2])], whole[[-1, -10, 2]])  # as numpy
    with pytest.raises(IndexError, match="outside 0..9"):
        st.take(np.array([10]))
    with pytest.raises(IndexError, match="must be integers"):
        st[np.ones(10, bool)]  # a mask is no list of rows (as ints it would be rows 0 and 1)
    paths = write_shards(tmp_path / "mixed", [parts[0], parts[2].astype(np.float32)])
    mixed = ShardedTokens(paths, [3, 5], (4, 3), np.uint8)
    np.testing.assert_array_equal(mixed[:3], parts[0])
    with pytest.raises(ValueError, match=r"00001.npy is \(5, 4, 3\) float32"):
        mixed[3]


def test_images_inside_parquet_shards(tmp_path):
    """The HuggingFace layout: encoded images in row `image_row` of a parquet shard."""
    import io

    from hub_standin import make_standin_dataset

    st = make_standin_dataset(tmp_path / "ds", n_per_split={"train": 20, "validation": 4, "test": 4},
                              image_size=32, corrupt_image=True, null_image=True)
    rows = st.rows.reset_index(drop=True)
    meta = pd.DataFrame({"id": rows["dr8_id"].astype(str), "image_path": rows["file"], "image_row": rows["row"]})
    meta = pd.concat([meta, pd.DataFrame({"id": ["gone"], "image_path": ["data/nowhere.parquet"], "image_row": [0]})],
                     ignore_index=True)
    counts = tokenise_split(meta, st.root, tmp_path / "t", patch_size=8, image_size=32, shard_size=7,
                            workers=2, chunk_size=3, max_reject_fraction=1, log=_quiet)
    rej = pd.read_csv(tmp_path / "t" / "rejected.csv").set_index("id")
    corrupt, null = st.planted["corrupt_image"], st.planted["null_image"]
    assert set(rej.index) == {corrupt, null, "gone"} and counts["n_galaxies"] == len(meta) - 3
    assert rej.loc[corrupt, "reason"].startswith("unreadable") and rej.loc[null, "reason"] == "no image data"
    assert rej.loc["gone", "reason"] == "missing file"
    assert rej.loc[corrupt, "image_path"].endswith(".parquet (row 0)")
    split = load_tokens(tmp_path / "t")
    by_id = dict(zip(rows["dr8_id"].astype(str), rows["image"]))
    for k, gid in enumerate(split.ids):
        img = np.asarray(Image.open(io.BytesIO(by_id[gid])).convert("RGB"))
        np.testing.assert_array_equal(split.tokens[k], image_to_tokens(img, 8), err_msg=gid)


def test_sharded_tokens_from_files_keep_few_maps_open(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 255, (n, 4, 3), dtype=np.uint8) for n in (3, 5, 2, 4)]
    paths = []
    for k, a in enumerate(parts):
        np.save(tmp_path / f"{k}.npy", a)
        paths.append(tmp_path / f"{k}.npy")
    whole = np.concatenate(parts)
    st = ShardedTokens(paths, [len(a) for a in parts], (4, 3), np.uint8, max_open=2)
    for _ in range(3):  # cycling through every shard, more than max_open of them
        for rows in (np.array([0, 4, 9, 12]), np.array([13, 1]), np.arange(14)):
            np.testing.assert_array_equal(st[rows], whole[rows])
            assert sum(a is not None for a in st._arrays) <= 2
    np.testing.assert_array_equal(st[2:11, 1:], whole[2:11, 1:])
    bad = ShardedTokens(paths, [3, 5, 3, 4], (4, 3), np.uint8)  # shard 2 does not hold 3 rows
    with pytest.raises(ValueError, match=r"2.npy is \(2, 4, 3\)"):
        bad[9]


def test_jobs_leave_each_others_files_alone_and_stale_shards_go(folder, tmp_path):
    root, meta, _ = folder
    kw = dict(patch_size=8, image_size=32, log=_quiet, max_reject_fraction=1)
    out = tmp_path / "t"
    (out / "shards").mkdir(parents=True)
    busy = out / "shards" / "00005.npy.tmp-othernode-123-abcd"  # job 1 of 2 is writing shard 5
    busy.write_bytes(b"in progress")
    tokenise_group(meta, root, out, TokeniseSettings(8, 32, shard_size=2), group=0, groups=2, log=_quiet,
                   max_reject_fraction=1)  # shards 0-3 of 8
    assert busy.exists()
    tokenise_group(meta, root, out, TokeniseSettings(8, 32, shard_size=2), group=1, groups=2, log=_quiet,
                   max_reject_fraction=1)  # its own leftovers go
    assert not busy.exists()
    merge_token_groups(out, 2, max_reject_fraction=1, log=_quiet)
    assert len(list((out / "shards").glob("*.npy"))) == 8
    lines: list[str] = []
    tokenise_split(meta, root, out, shard_size=8, **{**kw, "log": lines.append})  # 2 shards now
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == ["00000.npy", "00001.npy"]
    assert sorted(p.name for p in (out / "parts").iterdir()) == [f"0000-of-0001{e}" for e in (".json", ".parquet", ".rejected.csv")]
    assert any("removed 18 stale shard/part files" in line for line in lines)
    assert load_tokens(out).meta["n_galaxies"] == 12


# ---------------------------------------------------------------------------------------------
# The workflow's stage functions: tokenise_part (tokenise), collect_rejected (rejected)
# ---------------------------------------------------------------------------------------------
def test_tokenise_part_joins_params_and_operational_settings(folder, tmp_path):
    """The tokenise rule's function: part name -> job, params' token settings, workers and
    max_reject_fraction passed apart; the same shards as one call with the same settings."""
    root, meta, _ = folder
    meta.assign(split=["train"] * 14 + ["test"] * 2).to_parquet(root / "metadata.parquet")
    tokens = {"patch_size": 8, "fit": "reject", "nan": "reject", "dtype": "auto", "shard_size": 4}
    out = tmp_path / "tokens" / "train"
    for part in ("0001-of-0002", "0000-of-0002"):
        summary = tokenise_part(root / "metadata.parquet", "train", part, out, tokens, 32, 3, "image",
                                workers=1, max_reject_fraction=1, log=_quiet)
    assert (summary["group"], summary["groups"], summary["n_shards"]) == (0, 2, 4)
    merged = merge_token_groups(out, 2, max_reject_fraction=1, log=_quiet)
    one = tokenise_split(meta.iloc[:14], root, tmp_path / "one", 8, 32, shard_size=4, split="train",
                         max_reject_fraction=1, log=_quiet)
    assert {k: v for k, v in merged.items() if k != "groups"} == {k: v for k, v in one.items() if k != "groups"}
    assert (out / "index.parquet").read_bytes() == (tmp_path / "one" / "index.parquet").read_bytes()
    with pytest.raises(RuntimeError, match="were rejected"):  # shards 2-3: 2 of 6 unreadable
        tokenise_part(root / "metadata.parquet", "train", "0001-of-0002", out, tokens, 32, workers=1,
                      max_reject_fraction=0.25, log=_quiet)
    with pytest.raises(ValueError, match="no galaxies in split 'validation'"):
        tokenise_part(root / "metadata.parquet", "validation", "0000-of-0001", out, tokens, 32, log=_quiet)
    assert parse_part_name(part_name(3, 16)) == (3, 16)


def test_settings_are_checked_when_made():
    assert TokeniseSettings(8, shard_size=4.0, n_chan=1.0).shard_size == 4  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nan must be one of"):
        TokeniseSettings(8, nan="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        TokeniseSettings(8, shard_size=0)


def test_collect_rejected_keeps_every_id_as_text(tmp_path):
    cols = "id,image_path,reason\n"
    (tmp_path / "d.csv").write_text(cols + "nan,x.png,no metadata row\n")
    (tmp_path / "t.csv").write_text(cols + "007,y.fits,NaN pixels: 3\n")
    (tmp_path / "v.csv").write_text(cols)
    table = collect_rejected(tmp_path / "d.csv", {"train": tmp_path / "t.csv", "validation": tmp_path / "v.csv"},
                             tmp_path / "all.csv", log=_quiet)
    assert table["id"].tolist() == ["nan", "007"] and table["stage"].tolist() == ["download", "tokenise"]
    assert table["split"].tolist() == ["", "train"]
    assert pd.read_csv(tmp_path / "all.csv", dtype=str, keep_default_na=False)["id"].tolist() == ["nan", "007"]
