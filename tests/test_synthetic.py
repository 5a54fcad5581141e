"""Tests of the synthetic galaxy generator (astropt/synthetic.py).

Run: python -m pytest tests/test_synthetic.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from astropt.synthetic import SyntheticConfig, generate, render_batch, sample_properties

TRUTHS = [
    "redshift",
    "mag_g_desi",
    "mag_r_desi",
    "mag_z_desi",
    "mag_abs_g_photoz",
    "mag_abs_r_photoz",
    "mag_abs_z_photoz",
    "mass_med_photoz",
    "ssfr_med_photoz",
    "est_petro_th50",
    "axis_ratio",
    "bulge_fraction",
]


def _quiet(_: str) -> None:
    pass


def _read(out: Path, meta: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / p)) for p in meta["image_path"]])


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    out = tmp_path_factory.mktemp("syn")
    cfg = SyntheticConfig(n_train=180, n_val=20, n_test=24, chunk_size=64)
    meta = generate(out, cfg, log=_quiet)
    return out, meta, _read(out, meta)


def _small(tmp: Path, name: str, **kw) -> tuple[pd.DataFrame, dict[str, bytes]]:
    cfg = SyntheticConfig(**{"n_train": 14, "n_val": 5, "n_test": 5, "chunk_size": 8, **kw})
    meta = generate(tmp / name, cfg, log=_quiet)
    files = {p: (tmp / name / p).read_bytes() for p in meta["image_path"]}
    return meta, files


def test_deterministic_and_worker_independent(tmp_path):
    m1, f1 = _small(tmp_path, "a")
    m2, f2 = _small(tmp_path, "b")
    m3, f3 = _small(tmp_path, "c", workers=2)
    m4, f4 = _small(tmp_path, "d", seed=1)
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(m1, m3)
    assert f1 == f2 == f3
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "metadata.parquet"), m1)
    assert not np.allclose(m1["redshift"], m4["redshift"])
    assert f1 != f4


def test_chunking_does_not_change_output():
    cfg = SyntheticConfig(n_train=30, n_val=0, n_test=0)
    whole = sample_properties(cfg)
    parts = pd.concat([sample_properties(cfg, s, min(s + 7, 30)) for s in range(0, 30, 7)])
    pd.testing.assert_frame_equal(whole, parts.reset_index(drop=True))
    images = np.concatenate([render_batch(sample_properties(cfg, s, s + 10), cfg) for s in (0, 10, 20)])
    np.testing.assert_array_equal(render_batch(whole, cfg), images)


def test_files_and_columns(sample):
    out, meta, images = sample
    assert images.shape == (len(meta), 64, 64, 3) and images.dtype == np.uint8
    with Image.open(out / meta["image_path"].iloc[0]) as im:
        assert im.mode == "RGB" and im.size == (64, 64) and im.format == "PNG"
    assert meta["id"].iloc[42] == "syn0000042"
    assert meta["image_path"].iloc[42] == "images/syn0000042.png"
    assert meta["id"].is_unique
    assert meta["split"].value_counts().to_dict() == {"train": 180, "validation": 20, "test": 24}
    assert list(meta["split"].iloc[[0, 179, 180, 199, 200, 223]]) == [
        "train", "train", "validation", "validation", "test", "test",
    ]
    for col in TRUTHS:
        assert col in meta and meta[col].dtype == np.float64 and meta[col].notna().all(), col
    assert not any(c.startswith("_") or "position_angle" in c for c in meta.columns)
    stored = pd.read_parquet(out / "metadata.parquet")
    pd.testing.assert_frame_equal(stored, meta)


def test_physical_ranges_and_relations(sample):
    _, m, _ = sample
    cfg = SyntheticConfig()
    assert m["redshift"].between(cfg.z_min, cfg.z_max).all()
    assert m["mass_med_photoz"].between(9.0, 11.8).all()
    assert m["ssfr_med_photoz"].between(-13.5, -8.5).all()
    for band in "grz":
        assert m[f"mag_{band}_desi"].between(12, 25).all()
        assert m[f"mag_abs_{band}_photoz"].between(-25, -15).all()
    assert m["est_petro_th50"].between(0.05, cfg.max_re_frac * 64 * cfg.pixel_scale + 1e-9).all()
    assert m["axis_ratio"].between(0.1, 1.0).all()
    assert m["bulge_fraction"].between(0.0, 1.0).all()
    # Observed colours within what real galaxies show.
    assert (m["mag_g_desi"] - m["mag_r_desi"]).between(0.0, 2.0).all()

    rho = lambda a, b: spearmanr(m[a], m[b])[0]  # noqa: E731
    assert rho("mass_med_photoz", "ssfr_med_photoz") < -0.3  # sSFR falls with mass
    assert rho("ssfr_med_photoz", "bulge_fraction") < -0.5  # quenched galaxies are bulgy
    assert rho("mass_med_photoz", "mag_abs_r_photoz") < -0.8  # massive galaxies are luminous
    assert spearmanr(m["ssfr_med_photoz"], m["mag_g_desi"] - m["mag_r_desi"])[0] < -0.5  # blue SF
    # At fixed mass, farther galaxies are fainter and smaller on the sky.
    X = np.column_stack([np.ones(len(m)), m["redshift"], m["mass_med_photoz"]])
    coef_mag = np.linalg.lstsq(X, m["mag_r_desi"], rcond=None)[0]
    coef_size = np.linalg.lstsq(X, np.log(m["est_petro_th50"]), rcond=None)[0]
    assert coef_mag[1] > 5 and coef_mag[2] < 0
    assert coef_size[1] < 0 and coef_size[2] > 0


def test_images_carry_the_truths(sample):
    _, m, images = sample
    img = images.astype(np.float64)
    flux = img.sum(axis=(1, 2, 3))
    assert spearmanr(flux, m["mag_r_desi"])[0] < -0.8

    # Size proxy: light-weighted second moment of the pixels clearly above the sky.
    lum = img.sum(axis=-1)
    sky = np.median(lum[:, :6, :6], axis=(1, 2))[:, None, None]
    w = np.where(lum > sky + 25, lum - sky, 0.0)
    yy, xx = np.mgrid[:64, :64] - 31.5
    m2 = (w * (xx**2 + yy**2)).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    assert spearmanr(np.sqrt(m2), m["est_petro_th50"])[0] > 0.6
    assert spearmanr((lum > sky + 25).sum(axis=(1, 2)), m["est_petro_th50"])[0] > 0.3

    # Colour: red / blue channel ratio follows g - z (RGB = (z, r, g)).
    ratio = img[..., 0].sum(axis=(1, 2)) / img[..., 2].sum(axis=(1, 2))
    assert spearmanr(ratio, m["mag_g_desi"] - m["mag_z_desi"])[0] > 0.6

    # Not blank, not saturated: a dark sky, a visible galaxy, few clipped pixels.
    assert np.median(lum[:, :6, :6]) < 3 * 40
    assert (images.reshape(len(m), -1).max(axis=1) > 60).mean() > 0.95
    assert (images == 255).mean() < 0.01


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, SyntheticConfig(n_train=2, n_val=0, n_test=0, image_size=4), log=_quiet)
    with pytest.raises(ValueError, match="split sizes"):
        generate(tmp_path, SyntheticConfig(n_train=0, n_val=0, n_test=0), log=_quiet)
