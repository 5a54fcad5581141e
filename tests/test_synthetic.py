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

from astropt.synthetic import (
    SyntheticConfig,
    _scene_draws,
    _stars,
    generate,
    render_batch,
    sample_properties,
)

VOTES = [
    "smooth-or-featured_smooth_fraction",
    "smooth-or-featured_featured-or-disk_fraction",
    "smooth-or-featured_artifact_fraction",
    "disk-edge-on_yes_fraction",
    "spiral-winding_tight_fraction",
]
FLAGS = ["has_neighbour", "has_artifact", "n_stars"]
OFF = {"neighbour_fraction": 0.0, "stars_per_stamp": 0.0, "artifact_fraction": 0.0}
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
    *VOTES,
]
YY, XX = np.mgrid[:64, :64] - 31.5
RR = np.hypot(XX, YY)  # distance of each pixel centre from the stamp centre


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
    busy = {"neighbour_fraction": 0.5, "stars_per_stamp": 4.0, "artifact_fraction": 0.5,
            "saturation_mag": 17.0}
    cfg = SyntheticConfig(n_train=30, n_val=0, n_test=0, **busy)
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
    for col in FLAGS:  # integers, not bools, so that numeric probes see them
        assert col in meta and meta[col].dtype == np.int64, col
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
    lum = img.sum(axis=-1)
    sky = np.median(lum[:, :6, :6], axis=(1, 2))[:, None, None]
    # Measures of the central galaxy in a 10 px aperture (stars keep 6.4 px away from the centre,
    # neighbours 14 px); the whole stamp still follows mag_r, through the stars and neighbours.
    ap = RR < 10
    assert spearmanr(((lum - sky) * ap).sum(axis=(1, 2)), m["mag_r_desi"])[0] < -0.9
    assert spearmanr(img.sum(axis=(1, 2, 3)), m["mag_r_desi"])[0] < -0.6

    # Size proxy: light-weighted second moment of the aperture's pixels clearly above the sky.
    above = (lum > sky + 25) & ap
    w = np.where(above, lum - sky, 0.0)
    m2 = (w * RR**2).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    assert spearmanr(np.sqrt(m2), m["est_petro_th50"])[0] > 0.75
    assert spearmanr(above.sum(axis=(1, 2)), m["est_petro_th50"])[0] > 0.6

    # Colour: red / blue channel ratio follows g - z (RGB = (z, r, g)).
    ratio = (img[..., 0] * ap).sum(axis=(1, 2)) / (img[..., 2] * ap).sum(axis=(1, 2))
    assert spearmanr(ratio, m["mag_g_desi"] - m["mag_z_desi"])[0] > 0.85

    # Not blank, not saturated: a dark sky, a visible galaxy, few clipped pixels.
    assert np.median(lum[:, :6, :6]) < 3 * 40
    assert (images.reshape(len(m), -1).max(axis=1) > 60).mean() > 0.95
    assert (images == 255).mean() < 0.01


def test_votes_and_flags_follow_the_truths():
    cfg = SyntheticConfig(n_train=4000, n_val=0, n_test=0)
    m = sample_properties(cfg)
    for col in VOTES:
        assert m[col].between(0.0, 1.0).all(), col
    first = m[VOTES[0]] + m[VOTES[1]] + m[VOTES[2]]  # one question's three answers
    np.testing.assert_allclose(first, 1.0, rtol=1e-12)

    # Rates as configured (binomial / Poisson tolerances of about 4 sigma).
    assert abs(m["has_neighbour"].mean() - cfg.neighbour_fraction) < 0.025
    assert abs(m["has_artifact"].mean() - cfg.artifact_fraction) < 0.013
    assert abs(m["n_stars"].mean() - cfg.stars_per_stamp) < 0.1
    assert abs(m["n_stars"].var() / m["n_stars"].mean() - 1) < 0.15  # Poisson
    assert set(m["has_neighbour"]) == {0, 1} and set(m["has_artifact"]) == {0, 1}

    # Artefact votes where an artefact was drawn; smooth for bulges, featured for discs.
    art = m["smooth-or-featured_artifact_fraction"]
    assert art[m["has_artifact"] == 1].median() > 0.4 > 0.1 > art[m["has_artifact"] == 0].median()
    assert art[m["has_artifact"] == 1].mean() > 5 * art[m["has_artifact"] == 0].mean()
    assert spearmanr(m["bulge_fraction"], m["smooth-or-featured_smooth_fraction"])[0] > 0.6
    assert spearmanr(m["bulge_fraction"], m["smooth-or-featured_featured-or-disk_fraction"])[0] < -0.6
    # Edge-on for inclined discs, not for bulges.
    edge = m["disk-edge-on_yes_fraction"]
    discs = m["bulge_fraction"] < 0.3
    assert spearmanr(m.loc[discs, "axis_ratio"], edge[discs])[0] < -0.7
    assert edge[discs & (m["axis_ratio"] < 0.25)].mean() > 0.7
    assert edge[discs & (m["axis_ratio"] > 0.7)].mean() < 0.1
    assert edge[m["bulge_fraction"] > 0.8].mean() < 0.05
    # Tighter arms in bulgier galaxies (Sa -> Sc), with scatter.
    tight = m["spiral-winding_tight_fraction"]
    assert 0.7 < spearmanr(m["bulge_fraction"], tight)[0] < 0.99

    # Turning the stamp features off changes neither the truths nor anything else.
    off = sample_properties(SyntheticConfig(n_train=4000, n_val=0, n_test=0, **OFF))
    assert (off[FLAGS] == 0).all().all()
    pd.testing.assert_frame_equal(off[TRUTHS[:12]], m[TRUTHS[:12]])
    assert (off["smooth-or-featured_artifact_fraction"] < 0.3).all()


def test_neighbours_stars_and_artefacts_are_in_the_pixels(sample):
    _, m, images = sample
    cfg = SyntheticConfig(n_train=180, n_val=20, n_test=24)
    clean_cfg = SyntheticConfig(n_train=180, n_val=20, n_test=24, **OFF)
    clean = render_batch(sample_properties(clean_cfg), clean_cfg)
    diff = np.abs(images.astype(np.int64) - clean).sum(axis=-1)  # (N, H, W)
    changed = diff.any(axis=(1, 2))
    flagged = (m["has_neighbour"] == 1) | (m["has_artifact"] == 1) | (m["n_stars"] > 0)
    assert flagged.sum() > 150 and (~flagged).sum() > 10
    np.testing.assert_array_equal(changed, flagged.to_numpy())  # pixels change only where flagged

    # Neighbours alone: the added light lies well off the centre.
    nb_cfg = SyntheticConfig(n_train=180, n_val=20, n_test=24, stars_per_stamp=0.0, artifact_fraction=0.0)
    nb = np.abs(render_batch(sample_properties(nb_cfg), nb_cfg).astype(np.int64) - clean).sum(axis=-1)
    has_nb = (m["has_neighbour"] == 1).to_numpy()
    assert has_nb.sum() > 15 and nb[has_nb].any(axis=(1, 2)).all() and not nb[~has_nb].any()
    for b in np.nonzero(has_nb)[0]:
        cy, cx = (nb[b] * YY).sum() / nb[b].sum(), (nb[b] * XX).sum() / nb[b].sum()
        assert np.hypot(cx, cy) > 8, m["id"].iloc[b]
    # Stars: every star brightens its own pixel (stamps without artefacts, whose strips blank).
    _, ustar, _ = _scene_draws(cfg.seed, np.arange(len(m)))
    stars = _stars(cfg, ustar, m["n_stars"].to_numpy())
    b, j = np.nonzero(np.isfinite(stars["mag_r"]))
    keep = (m["has_artifact"].to_numpy()[b] == 0)
    b, j = b[keep], j[keep]
    px = np.clip(stars["x"][b, j].astype(int), 0, 63)
    py = np.clip(stars["y"][b, j].astype(int), 0, 63)
    assert len(b) > 200 and (diff[b, py, px] > 0).mean() > 0.99
    assert np.median(diff[b, py, px]) > 50
    assert (RR[py, px] >= 0.1 * 64 - 1).all()  # none on the target
    # Artefacts: every one changes its stamp; a trail or column is a line, a strip a gap.
    assert changed[(m["has_artifact"] == 1).to_numpy()].all()


def _longest_run(mask: np.ndarray) -> int:
    """Longest run of True along the last axis of a 2-D mask."""
    best = 0
    for row in mask:
        run = 0
        for v in row:
            run = run + 1 if v else 0
            best = max(best, run)
    return best


def test_saturated_stars_and_artefact_kinds_look_right():
    kw = {"n_train": 40, "n_val": 0, "n_test": 0, "neighbour_fraction": 0.0}
    cfg = SyntheticConfig(**kw, stars_per_stamp=1.0, star_mag_range=(14.0, 15.5), artifact_fraction=0.0)
    m = sample_properties(cfg)
    images = render_batch(m, cfg)
    white = (images == 255).all(axis=-1)  # flat, saturated cores
    has = (m["n_stars"] > 0).to_numpy()
    assert has.sum() > 10 and white[has].any(axis=(1, 2)).all() and not white[~has].any()
    # A bleed trail: the longest vertical run of white pixels beats the longest horizontal one.
    for b in np.nonzero(has)[0]:
        assert _longest_run(white[b].T) > _longest_run(white[b]) + 2, m["id"].iloc[b]

    cfg = SyntheticConfig(**kw, stars_per_stamp=0.0, artifact_fraction=1.0)
    m = sample_properties(cfg)
    images = render_batch(m, cfg).astype(np.int64)
    off = SyntheticConfig(**{**kw, **OFF})
    clean = render_batch(sample_properties(off), off)
    kind = m["_art_kind"].to_numpy()
    assert set(kind) == {0, 1, 2}
    diff = np.abs(images - clean).sum(axis=-1)
    for b in range(len(m)):
        if kind[b] == 2:  # missing data: a strip at an edge with a band or all bands zero
            assert (images[b] == 0).any(axis=-1).sum() >= 4 * 64, m["id"].iloc[b]
        else:  # trail or bad column: a thin feature, well under a quarter of the stamp
            assert 0 < (diff[b] > 0).sum() < 0.25 * 64 * 64, m["id"].iloc[b]


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, SyntheticConfig(n_train=2, n_val=0, n_test=0, image_size=4), log=_quiet)
    with pytest.raises(ValueError, match="split sizes"):
        generate(tmp_path, SyntheticConfig(n_train=0, n_val=0, n_test=0), log=_quiet)
    for bad in ({"neighbour_fraction": 1.5}, {"artifact_fraction": -0.1}, {"stars_per_stamp": -1.0},
                {"star_mag_range": (20.0, 15.0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate(tmp_path, SyntheticConfig(n_train=2, n_val=0, n_test=0, **bad), log=_quiet)
