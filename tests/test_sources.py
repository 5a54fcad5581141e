"""Tests of the data sources and the download stage (astropt/sources.py), the folder source
together with the FITS-aware tokeniser.

Run: python -m pytest tests/test_sources.py -q
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astropt.config import REJECTED_COLUMNS
from astropt.patches import image_to_tokens
from astropt.shards import load_tokens
from astropt.sources import download, folder_catalogue, read_catalogue, stamp_id, write_folder_source
from tokens_helper import tokenise_split

fits = pytest.importorskip("astropy.io.fits")


def _quiet(_: str) -> None:
    pass


def _write_fits(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".gz"):
        raw = path.with_name(path.name[:-3])
        fits.PrimaryHDU(data).writeto(raw)
        path.write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
    else:
        fits.PrimaryHDU(data).writeto(path)


def _write_png(path: Path, img: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)


# What each stamp of the mixed folder becomes: None = kept, else the start of its reason.
EXPECTED = {
    "png32": None,
    "jpg32": None,
    "jpg40": None,  # cropped
    "007": None,  # an id with leading zeros stays a string
    "fits32": None,
    "fits40": None,  # gzipped, cropped
    "hwc": None,  # a (32, 32, 3) cube: bands last
    "nan": "NaN pixels: 5",
    "trunc": "unreadable",
    "garbage": "unreadable",
    "cut": "unreadable: ValueError: File may have been truncated",  # truncated FITS
    "cutgz": "unreadable",  # truncated gzipped FITS
    "band5": "unexpected band count: 5 (expected 3)",
    "small": "wrong size: 24x24 px, expected 32x32 (smaller than the crop)",
    "dup": "duplicate id: 2 image files",
    "orphan": "no metadata row",
    "ghost": "no image file",
    "twice": "duplicate id: 2 catalogue rows",
}


@pytest.fixture
def mixed(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A folder of PNG/JPEG/FITS stamps of several sizes, some broken, plus a CSV catalogue.

    Returns (image folder, catalogue, the pixels of the good stamps as (H, W, C) arrays).
    """
    root = tmp_path / "stamps"
    rng = np.random.default_rng(0)
    pix: dict[str, np.ndarray] = {}

    pix["png32"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _write_png(root / "a" / "png32.png", pix["png32"])
    pix["007"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _write_png(root / "a" / "007.PNG", pix["007"])
    for name, side, sub in (("jpg32", 32, "a"), ("jpg40", 40, "b")):
        ext = "jpg" if side == 32 else "JPEG"
        _write_png(root / sub / f"{name}.{ext}", rng.integers(0, 256, (side, side, 3), dtype=np.uint8), quality=90)
        with Image.open(next((root / sub).glob(f"{name}.*"))) as im:
            pix[name] = np.asarray(im.convert("RGB"))  # JPEG is lossy: compare with its decode
    pix["fits32"] = rng.normal(0, 1, (32, 32, 3)).astype(np.float32)
    _write_fits(root / "b" / "fits32.fits", pix["fits32"].transpose(2, 0, 1))  # (bands, H, W)
    pix["fits40"] = rng.normal(0, 100, (40, 40, 3)).astype(np.float32)
    _write_fits(root / "c" / "fits40.fits.gz", pix["fits40"].transpose(2, 0, 1))
    pix["hwc"] = rng.normal(0, 1, (32, 32, 3)).astype(np.float32)
    _write_fits(root / "c" / "hwc.fit", pix["hwc"])  # stored (H, W, bands)

    nan = rng.normal(0, 1, (3, 32, 32)).astype(np.float32)
    nan.flat[[3, 50, 700, 1500, 3000]] = np.nan
    _write_fits(root / "c" / "nan.fts", nan)
    _write_png(root / "x.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    data = (root / "x.png").read_bytes()
    (root / "x.png").unlink()
    (root / "d").mkdir()
    (root / "d" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "d" / "garbage.fits").write_bytes(b"SIMPLE? no, garbage " * 200)
    for name in ("cut.fits", "cutgz.fits.gz"):
        _write_fits(root / "d" / name, rng.normal(0, 1, (3, 32, 32)).astype(np.float32))
        data = (root / "d" / name).read_bytes()
        (root / "d" / name).write_bytes(data[: len(data) // 2])
    _write_fits(root / "d" / "band5.fits", rng.normal(0, 1, (5, 32, 32)).astype(np.float32))
    _write_png(root / "d" / "small.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    _write_png(root / "a" / "dup.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _write_png(root / "b" / "dup.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _write_png(root / "d" / "orphan.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _write_png(root / "d" / "twice.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "d" / "notes.txt").write_text("not a stamp")
    (root / "d" / "._png32.png").write_bytes(b"macOS resource fork")  # hidden: ignored

    ids = [i for i in EXPECTED if i != "orphan"] + ["twice"]
    cat = pd.DataFrame({"objid": ids, "redshift": np.linspace(0.1, 0.5, len(ids)), "flag": range(len(ids))})
    cat_path = tmp_path / "catalogue.csv"
    cat.to_csv(cat_path, index=False)
    return root, cat_path, pix


def test_stamp_id():
    assert stamp_id("J12+34.fits.gz") == "J12+34" and stamp_id("a.b.FIT.GZ") == "a.b"
    assert stamp_id("x.Jpeg") == "x" and stamp_id("x.fts") == "x"
    assert stamp_id("x.txt") is None and stamp_id("x.gz") is None and stamp_id(".png") is None


def test_folder_mixed_end_to_end(mixed, tmp_path):
    root, cat_path, pix = mixed
    lines: list[str] = []
    meta, rej_src = folder_catalogue(root, cat_path, id_column="objid", seed=3, log=lines.append)
    assert list(meta.columns) == ["id", "split", "image_path", "redshift", "flag"]
    assert meta["id"].tolist() == sorted(meta["id"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in meta["image_path"])
    assert set(meta["split"]) <= {"train", "validation", "test"}
    assert (meta["split"] == "validation").sum() == 1 and (meta["split"] == "test").sum() == 1
    assert meta.set_index("id").loc["007", "flag"] == list(EXPECTED).index("007")
    assert "kept 14 galaxies" in lines[-1] and "no metadata row: 1" in lines[-1]
    assert (rej_src["id"] == "dup").sum() == 2  # both copies listed, one per file
    assert sorted(rej_src.loc[rej_src["id"] == "dup", "image_path"].map(lambda p: Path(p).parent.name)) == ["a", "b"]

    out = tmp_path / "tok"
    # Absolute image paths: image_root (the metadata folder in the workflow) does not matter.
    counts = tokenise_split(
        meta, tmp_path / "resources", out, patch_size=8, image_size=32, fit="crop", max_reject_fraction=0.6, log=_quiet
    )
    rej_tok = pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)  # id "nan"
    rejected = pd.concat([rej_src, rej_tok])
    reasons = rejected.groupby("id")["reason"].first().to_dict()
    split = load_tokens(out)
    kept = {i for i, r in EXPECTED.items() if r is None}
    assert set(split.ids) == kept
    assert set(reasons) == set(EXPECTED) - kept
    for gid, reason in reasons.items():
        assert reason.startswith(EXPECTED[gid]), (gid, reason)
    assert counts["n_cropped"] == 2 and counts["n_nan"] == 1 and counts["n_wrong_bands"] == 1

    # auto dtype: the split holds FITS, so float32; 8-bit stamps keep their 0-255 values.
    assert split.tokens.dtype == np.float32 and split.meta["dtype"] == "float32"
    assert split.tokens.shape == (len(kept), 16, 192)
    row = {g: k for k, g in enumerate(split.ids)}
    for gid in ("png32", "007", "jpg32", "fits32", "hwc"):
        np.testing.assert_array_equal(split.tokens[row[gid]], image_to_tokens(pix[gid].astype(np.float32), 8))
    for gid in ("jpg40", "fits40"):  # crop = the centre 32x32
        centre = pix[gid][4:36, 4:36].astype(np.float32)
        np.testing.assert_array_equal(split.tokens[row[gid]], image_to_tokens(centre, 8))


def test_folder_resize_and_workers(mixed, tmp_path):
    root, cat_path, pix = mixed
    meta, _ = folder_catalogue(root, cat_path, id_column="objid", log=_quiet)
    keep = meta[meta["id"].isin(["png32", "jpg40", "fits40", "small", "nan", "fits32"])]
    kw = dict(patch_size=8, image_size=32, fit="resize", nan="zero", log=_quiet)
    c1 = tokenise_split(keep, tmp_path / "resources", tmp_path / "r1", **kw)
    c2 = tokenise_split(keep, tmp_path / "resources", tmp_path / "r2", workers=2, chunk_size=2, **kw)
    assert c1 == c2 and c1["n_galaxies"] == 6 and c1["n_resized"] == 3 and c1["n_nan_zeroed"] == 1
    for name in ("shards/00000.npy", "rejected.csv", "meta.json"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    split = load_tokens(tmp_path / "r1")
    assert split.tokens.shape == (6, 16, 192)
    assert json.loads((tmp_path / "r1" / "meta.json").read_text())["fit"] == "resize"
    row = {g: k for k, g in enumerate(split.ids)}
    resized = np.asarray(split.tokens[row["fits40"]])
    assert np.isfinite(resized).all()
    assert abs(resized.mean() - pix["fits40"].mean()) < 5 and resized.std() < pix["fits40"].std()  # smoothed
    jpg = np.asarray(split.tokens[row["jpg40"]])
    assert jpg.min() >= 0 and jpg.max() <= 255 and np.array_equal(jpg, np.round(jpg))  # PIL, 8-bit


def test_split_assignment_is_seeded_and_order_free(tmp_path):
    ids = [f"g{i:03d}" for i in range(200)]
    a, b = tmp_path / "a", tmp_path / "b"
    for k, gid in enumerate(ids):  # empty files: the source does not decode
        (a / f"s{k % 3}").mkdir(parents=True, exist_ok=True)
        (a / f"s{k % 3}" / f"{gid}.png").touch()
    b.mkdir()
    for gid in reversed(ids):  # other names, other nesting, other creation order
        (b / f"{gid}.fits").touch()
    pd.DataFrame({"id": ids[::-1], "z": 1.0}).to_csv(tmp_path / "cat.csv", index=False)
    kw = dict(val_fraction=0.1, test_fraction=0.2, log=_quiet)
    m1, _ = folder_catalogue(a, tmp_path / "cat.csv", seed=5, **kw)
    m2, _ = folder_catalogue(b, tmp_path / "cat.csv", seed=5, **kw)
    m3, _ = folder_catalogue(a, tmp_path / "cat.csv", seed=6, **kw)
    assert m1["split"].value_counts().to_dict() == {"train": 140, "test": 40, "validation": 20}
    assert m1["id"].tolist() == ids and m1["split"].tolist() == m2["split"].tolist()
    assert m1["split"].tolist() != m3["split"].tolist()
    with pytest.raises(ValueError, match="val_fraction"):
        folder_catalogue(a, tmp_path / "cat.csv", val_fraction=0.6, test_fraction=0.5, log=_quiet)


def test_random_split_is_stable_when_stamps_are_added():
    from astropt.sources import _random_splits

    ids = [f"g{i:04d}" for i in range(1000)]
    before = _random_splits(ids, 0.1, 0.1, seed=0)
    after = _random_splits(ids + [f"new{i}" for i in range(20)], 0.1, 0.1, seed=0)
    moved = sum(before[g] != after[g] for g in ids)
    assert moved <= 10, moved  # only galaxies at the split boundaries may move


def test_split_column_path_column_and_parquet(tmp_path):
    root = tmp_path / "imgs"
    (root / "x").mkdir(parents=True)
    for i in range(7):
        (root / "x" / f"{i}.png").touch()
    cat = pd.DataFrame(
        {
            "id": np.arange(8, dtype=np.int64),  # parquet ints compare with file names as strings
            "file": [f"x/{i}.png" for i in range(7)] + ["x/missing.png"],
            "set": ["train", "val", " VALID ", "Test", "test", "dev", None, "train"],
            "mass": np.arange(8) * 1.5,
        }
    )
    (root / "unlisted.png").touch()
    cat.to_parquet(tmp_path / "cat.parquet")
    meta, rej = folder_catalogue(root, tmp_path / "cat.parquet", path_column="file", split_column="set", log=_quiet)
    assert list(meta.columns) == ["id", "split", "image_path", "mass"]
    assert dict(zip(meta["id"], meta["split"])) == {
        "0": "train", "1": "validation", "2": "validation", "3": "test", "4": "test",
    }
    assert meta["image_path"].iloc[1] == str(root / "x" / "1.png")
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert rej.set_index("id").loc["7", "image_path"] == str(root / "x" / "missing.png")  # the path it named
    assert reasons["5"] == "invalid split: 'dev' (expected train, validation or test)"
    assert reasons["6"].startswith("invalid split: missing")
    assert reasons["7"] == "no image file" and reasons["unlisted"].startswith("no metadata row (no 'file' value")

    # Same catalogue as CSV, written through write_folder_source: parquet + rejected.csv, atomically.
    cat.to_csv(tmp_path / "cat.csv", index=False)
    out = tmp_path / "res" / "metadata.parquet"
    m = write_folder_source(root, tmp_path / "cat.csv", out, path_column="file", split_column="set", log=_quiet)
    pd.testing.assert_frame_equal(pd.read_parquet(out), m)
    pd.testing.assert_frame_equal(m, meta)
    assert sorted(p.name for p in out.parent.iterdir()) == ["metadata.parquet", "rejected.csv"]
    assert list(pd.read_csv(out.parent / "rejected.csv").columns) == ["id", "image_path", "reason"]


def test_catalogue_errors(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").touch()
    pd.DataFrame({"name": ["a"], "z": [0.1]}).to_csv(tmp_path / "cat.csv", index=False)
    with pytest.raises(ValueError, match=r"no id column 'objid'.*\['name', 'z'\]"):
        folder_catalogue(root, tmp_path / "cat.csv", id_column="objid", log=_quiet)
    (tmp_path / "cat.xlsx").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"cat\.xlsx.*\.csv.*\.parquet"):
        read_catalogue(tmp_path / "cat.xlsx")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        folder_catalogue(root, tmp_path / "nope.csv", log=_quiet)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_catalogue(tmp_path / "nowhere", tmp_path / "cat.csv", log=_quiet)
    with pytest.raises(ValueError, match="No galaxy.*matches"):  # every id mismatched
        folder_catalogue(root, tmp_path / "cat.csv", id_column="z", log=_quiet)
    pd.DataFrame({"id": ["a"], "split": ["train"]}).to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(ValueError, match="'split'.*split_column"):
        folder_catalogue(root, tmp_path / "clash.csv", log=_quiet)


def test_download_stage_joins_params_and_config(tmp_path):
    """The download rule's function: the source's params, completed by the config's operational
    keys (params win), for the folder and the synthetic source."""
    ids = [f"g{i:02d}" for i in range(10)]
    (tmp_path / "stamps").mkdir()
    for gid in ids + ["orphan"]:
        (tmp_path / "stamps" / f"{gid}.png").touch()
    pd.DataFrame({"id": ids, "z": 1.0}).to_csv(tmp_path / "cat.csv", index=False)
    folder = {"images": str(tmp_path / "stamps"), "catalogue": str(tmp_path / "cat.csv"), "id_column": "id",
              "path_column": None, "split_column": None, "val_fraction": 0.2}
    data = {"source": "folder", "image_size": 32, "n_chan": 3, "folder": folder}
    config = {"folder": {**folder, "test_fraction": 0.3, "val_fraction": 0.5}}
    out = tmp_path / "resources" / "metadata.parquet"
    out.parent.mkdir()
    meta = download(data, out, tmp_path / "rejected.csv", seed=1, config_data=config, log=_quiet)
    assert meta["split"].value_counts().to_dict() == {"train": 5, "test": 3, "validation": 2}
    assert pd.read_parquet(out).equals(meta) and not (out.parent / "rejected.csv").exists()
    assert pd.read_csv(tmp_path / "rejected.csv")["id"].tolist() == ["orphan"]
    assert "test_fraction" not in data["folder"]  # the params are not changed

    syn = {"n_train": 3, "n_val": 1, "n_test": 2, "stars_per_stamp": 0.0}
    data = {"source": "synthetic", "image_size": 16, "n_chan": 3, "synthetic": syn}
    out = tmp_path / "syn" / "metadata.parquet"
    (out.parent / "images").mkdir(parents=True)
    (out.parent / "images" / "stale.png").touch()  # from a larger earlier run: removed
    meta = download(data, out, out.with_name("rejected.csv"), seed=2,
                    config_data={"synthetic": {"workers": 1, "n_test": 9}}, log=_quiet)
    assert len(meta) == 6 and sorted(p.name for p in (out.parent / "images").iterdir()) == sorted(meta["id"] + ".png")
    assert pd.read_csv(out.with_name("rejected.csv")).columns.tolist() == REJECTED_COLUMNS
    with pytest.raises(ValueError, match="unknown source 'ftp'"):
        download({"source": "ftp"}, out, out.with_name("rejected.csv"), seed=0)
