"""Synthetic galaxy stamps with known physical properties: the embedded default data set.

Stands in for the DESI Legacy Survey grz stamps of AstroPT (arXiv:2405.14930) when no
download is wanted: small (64x64 by default) 8-bit RGB PNGs rendered at the Legacy Survey
pixel scale (0.262"/px), with a metadata table whose truth columns carry the names of the real
DESI / Galaxy Zoo DESI metadata (``redshift``, ``mag_r_desi``, ``mass_med_photoz``, ...), so
that probes written for the real data run unchanged.

The physics is deliberately simple (scaling relations with scatter, not a survey simulation):

* redshift uniform in ``[z_min, z_max]``; log stellar mass normal, independent of redshift;
* quenched fraction rising with mass; log sSFR on a star-forming sequence that falls with mass,
  or in a quenched cloud;
* bulge-to-total light ratio (r band) high for quenched and massive galaxies;
* a red de Vaucouleurs (Sersic n=4) bulge plus an exponential (n=1) disc whose colour is bluer
  the higher the sSFR; a crude k-correction reddens both with redshift;
* absolute r magnitude from the mass and a colour-dependent mass-to-light ratio
  (Bell & de Jong 2001 form); apparent magnitudes from a flat LCDM distance modulus
  (H0=70, Om=0.3);
* physical sizes growing with mass, turned into angles with the angular-diameter distance;
  a random inclination sets the disc axis ratio, a random position angle the orientation;
* profiles integrated on a 2x supersampled pixel grid, Gaussian PSF, Gaussian sky noise, and a
  fixed (not per-image) colour-preserving asinh stretch in the style of the Legacy Survey viewer's
  ``sdss_rgb``, so brightness, size and colour stay visible in the 8-bit pixels.

Around the central galaxy (always the target: every truth describes it) a stamp may hold, as
real cutouts do:

* a neighbour (``neighbour_fraction`` of stamps): a fainter (0.5-3 mag), smaller Sersic galaxy
  (exponential or de Vaucouleurs) 14-27 px from the centre, with its own colour;
* foreground stars (Poisson, ``stars_per_stamp`` on average; none within 0.1 stamp of the
  centre): point sources with a Gaussian core and broad wings, magnitudes drawn from number
  counts rising as 10**(0.25 m), stellar colours; stars brighter than ``saturation_mag`` get a
  flat white core, diffraction spikes along the pixel axes and a vertical bleed trail;
* an artefact (``artifact_fraction`` of stamps): a satellite trail (a line in one band), a bad
  column (in one band) or a missing-data strip at an edge (one band, or all: black).

Galaxy Zoo DESI-like vote fractions are drawn from the truths with scatter: featured for
disc-dominated, large galaxies and smooth for bulge-dominated or small ones, the artefact answer
high where an artefact was drawn (and raised by saturated stars), edge-on for inclined discs.

Every galaxy draws its random numbers from its own generators, seeded from ``(seed, index, k)``
(k = 0 properties, 1 sky noise, 2 neighbour / stars / artefact / votes), so the output does not
depend on ``workers`` or chunking, and switching a stamp feature off (its fraction or rate 0)
leaves every other pixel and physical truth as it was (the vote fractions can move: saturated
stars raise the artefact vote). Galaxies are assigned to splits in index order:
the first ``n_train`` are "train", then ``n_val`` "validation", then ``n_test`` "test"
(galaxies are independent draws, so this is as random as a permutation).

Example::

    from astropt.synthetic import SyntheticConfig, generate
    meta = generate(Path("resources/synthetic"), SyntheticConfig(workers=2))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

from astropt.io import Progress, atomic_write, in_order

__all__ = ["SyntheticConfig", "generate", "sample_properties", "render_batch"]

_ZP = 22.5  # Legacy Survey magnitude zero point: flux in nanomaggies = 10**(-0.4 (m - 22.5))
_BANDS = ("g", "r", "z")
_B_SERSIC = {1: 1.6783469900166612, 4: 7.669249443105143}  # b_n: half the light inside r_e
_N_UNIFORM, _N_NORMAL = 6, 8  # random numbers per galaxy for its properties
_N_SCENE_U, _N_SCENE_G = 20, 4  # ... for its neighbour, artefact and star count; vote scatter
_MAX_STARS = 24  # stars per stamp at most (the Poisson draw is clipped; 4 uniforms per star)
_STAR_COUNT_SLOPE = 0.25  # star counts dN/dm rise as 10**(0.25 m), roughly, at high latitude
_STAR_PSF = ((0.80, 1.0), (0.17, 2.5), (0.03, 8.0))  # star PSF: (weight, sigma / seeing sigma)


@dataclass
class SyntheticConfig:
    """Settings of the synthetic galaxy set (defaults: the embedded default data)."""

    n_train: int = 10_000  # galaxies in the "train" split
    n_val: int = 1_024  # galaxies in the "validation" split
    n_test: int = 2_048  # galaxies in the "test" split
    image_size: int = 64  # stamp side in pixels
    pixel_scale: float = 0.262  # arcsec per pixel (Legacy Survey)
    psf_fwhm: float = 1.2  # Gaussian PSF FWHM in arcsec (typical DECaLS seeing)
    sky_noise: float = 0.001  # Gaussian sky noise per pixel, nanomaggies, every band (low: clear scaling)
    seed: int = 0  # master seed; galaxy i draws from SeedSequence([seed, i, stream]), streams 0-2
    workers: int = 1  # processes rendering and writing PNGs; the output does not depend on it
    z_min: float = 0.07  # redshift range (uniform); the low end sets the largest angular sizes
    z_max: float = 0.30
    logm_mean: float = 10.4  # log10 stellar mass [Msun]: normal mean ...
    logm_sigma: float = 0.45  # ... and sigma, clipped to [9.0, 11.8]
    max_re_frac: float = 0.15  # cap on a component's half-light radius, as a fraction of the stamp
    supersample: int = 2  # sub-pixels per pixel side when integrating the profiles
    stretch_q: float = 25.0  # asinh softening (higher: more compression of bright cores)
    stretch_m: float = 0.01  # black-level offset added before the stretch
    band_scales: tuple[float, float, float] = (3.0, 1.7, 1.1)  # g, r, z: half of sdss_rgb's, few saturate
    neighbour_fraction: float = 0.15  # stamps with a fainter, smaller galaxy off centre (0: none)
    stars_per_stamp: float = 2.0  # mean foreground stars per stamp, Poisson (0: none)
    star_mag_range: tuple[float, float] = (14.0, 23.5)  # r magnitudes of the stars (bright, faint)
    saturation_mag: float = 16.0  # stars brighter (r) saturate: flat white core, spikes, bleed
    artifact_fraction: float = 0.04  # stamps with a satellite trail, bad column or missing-data strip
    chunk_size: int = 128  # galaxies rendered per vectorised batch / work unit
    png_compress_level: int = 1  # zlib level of the PNGs (1: fast, lossless anyway)


# ---------------------------------------------------------------------------------------------
# Cosmology (flat LCDM, H0 = 70 km/s/Mpc, Om = 0.3)
# ---------------------------------------------------------------------------------------------
_H0, _OM, _C_KMS = 70.0, 0.3, 299_792.458


def _comoving_distance_mpc(z: np.ndarray, z_max: float) -> np.ndarray:
    """Comoving distance in Mpc, by trapezoidal integration on a fine grid and interpolation.

    The grid depends only on ``z_max`` (never on the batch), so results are batch-independent.
    """
    grid = np.linspace(0.0, max(1.0, z_max * 1.01), 4001)
    inv_e = 1.0 / np.sqrt(_OM * (1 + grid) ** 3 + (1 - _OM))
    dc = np.concatenate([[0.0], np.cumsum(0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(grid))])
    return np.interp(z, grid, dc) * _C_KMS / _H0


# ---------------------------------------------------------------------------------------------
# Galaxy properties
# ---------------------------------------------------------------------------------------------
def _sersic_cum(r_over_re: np.ndarray, n: int) -> np.ndarray:
    """Fraction of a Sersic profile's light inside (elliptical) radius r / r_e."""
    return special.gammainc(2 * n, _B_SERSIC[n] * np.power(np.maximum(r_over_re, 0), 1.0 / n))


def _half_light_radius(bt: np.ndarray, re_b: np.ndarray, re_d: np.ndarray) -> np.ndarray:
    """Half-light (semi-major) radius of bulge + disc, by vectorised bisection."""
    lo = np.minimum(re_b, re_d)
    hi = np.maximum(re_b, re_d)  # the composite's r_50 lies between its components'
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        frac = bt * _sersic_cum(mid / re_b, 4) + (1 - bt) * _sersic_cum(mid / re_d, 1)
        below = frac < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _galaxy_rng(seed: int, i: int, stream: int) -> np.random.Generator:
    """Galaxy ``i``'s generator for one stream: 0 properties, 1 sky noise, 2 scene."""
    return np.random.default_rng(np.random.SeedSequence([seed, int(i), stream]))


def _draws(seed: int, idx) -> tuple[np.ndarray, np.ndarray]:
    """Per-galaxy uniforms (N, 6) and normals (N, 8) of the properties (stream 0)."""
    u, g = np.empty((len(idx), _N_UNIFORM)), np.empty((len(idx), _N_NORMAL))
    for k, i in enumerate(idx):
        rng = _galaxy_rng(seed, i, 0)
        u[k], g[k] = rng.random(_N_UNIFORM), rng.standard_normal(_N_NORMAL)
    return u, g


def _scene_draws(seed: int, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-galaxy scene draws (stream 2), always the same count.

    Returns:
        Uniforms ``(N, _N_SCENE_U)`` (columns: 0-8 neighbour, 9-14 artefact, 15 star count),
        star uniforms ``(N, _MAX_STARS, 4)`` (x, y, magnitude, colour) and normals
        ``(N, _N_SCENE_G)`` (vote scatter: featured, edge-on, artefact, spiral winding). Draws
        are sequential, so a column appended at the end leaves the earlier ones unchanged.
    """
    u, s, g = np.empty((len(idx), _N_SCENE_U)), np.empty((len(idx), _MAX_STARS, 4)), np.empty((len(idx), _N_SCENE_G))
    for k, i in enumerate(idx):
        rng = _galaxy_rng(seed, i, 2)
        u[k], s[k], g[k] = rng.random(_N_SCENE_U), rng.random((_MAX_STARS, 4)), rng.standard_normal(_N_SCENE_G)
    return u, s, g


def _star_count(cfg: SyntheticConfig, u: np.ndarray) -> np.ndarray:
    """Poisson star counts by inverse CDF of one uniform each (a fixed number of draws)."""
    if cfg.stars_per_stamp <= 0:
        return np.zeros(len(u), np.int64)
    n = stats.poisson.ppf(u, cfg.stars_per_stamp)
    return np.clip(np.nan_to_num(n), 0, _MAX_STARS).astype(np.int64)


def _stars(cfg: SyntheticConfig, s: np.ndarray, n_stars: np.ndarray) -> dict[str, np.ndarray]:
    """Star positions (pixel coordinates, origin at the stamp corner), r mags and fluxes.

    Stars ``j >= n_stars`` of a stamp get zero flux. Positions are uniform over the stamp except
    a disc of radius 0.1 stamp around the centre: points inside radius 0.25 stamp are mapped,
    area-preservingly (so still uniformly), onto the annulus 0.1-0.25, keeping the target clean.

    Returns:
        ``x, y, mag_r`` ``(N, _MAX_STARS)`` and ``flux`` ``(N, _MAX_STARS, 3)`` in nanomaggies
        (bands g, r, z).
    """
    size = cfg.image_size
    dx, dy = (s[..., 0] - 0.5) * size, (s[..., 1] - 0.5) * size
    r = np.hypot(dx, dy)
    r_ex, r_0 = 0.1 * size, 0.25 * size
    inner = r < r_0
    scale = np.where(inner, np.sqrt(r_ex**2 + r**2 * (1 - (r_ex / r_0) ** 2)) / np.maximum(r, 1e-9), 1.0)
    x, y = size / 2 + dx * scale, size / 2 + dy * scale
    m0, m1 = cfg.star_mag_range
    a = _STAR_COUNT_SLOPE * np.log(10)  # truncated exponential in m: p(m) ~ exp(a m)
    mag_r = m0 + np.log1p(s[..., 2] * np.expm1(a * (m1 - m0))) / a
    # Main-sequence colours, G dwarfs to M dwarfs (roughly the SDSS / DECam stellar locus).
    gr = 0.25 + 1.25 * s[..., 3]
    rz = 0.05 + 0.55 * gr + 2.5 * np.maximum(gr - 1.2, 0.0)
    present = np.arange(_MAX_STARS)[None, :] < n_stars[:, None]
    flux_r = np.where(present, 10 ** (-0.4 * (mag_r - _ZP)), 0.0)
    flux = np.stack([flux_r * 10 ** (-0.4 * gr), flux_r, flux_r * 10 ** (0.4 * rz)], axis=-1)
    return {"x": x, "y": y, "mag_r": np.where(present, mag_r, np.inf), "flux": flux}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _star_formation(logm: np.ndarray, u: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log sSFR and the r-band bulge-to-total ratio of galaxies of log stellar mass ``logm``."""
    # Star formation: quenched fraction rises with mass; SF sequence sSFR falls with mass.
    p_quenched = _sigmoid((logm - 10.6) / 0.25)
    quenched = u[:, 1] < p_quenched
    ssfr = np.where(
        quenched,
        -11.7 + 0.35 * g[:, 1],
        -9.9 - 0.35 * (logm - 10.0) + 0.3 * g[:, 1],
    )

    # Bulge-to-total (r band): high for quenched / massive galaxies.
    logit_bt = 1.6 * (-(ssfr + 10.6)) + 1.0 * (logm - 10.5) - 0.4 + 0.5 * g[:, 2]
    bt = np.clip(_sigmoid(logit_bt), 0.02, 0.98)
    return ssfr, bt


def _photometry(
    cfg: SyntheticConfig, z: np.ndarray, logm: np.ndarray, ssfr: np.ndarray, bt: np.ndarray, g: np.ndarray
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Colours, magnitudes and fluxes: ``(cols, mag_abs, d_ang)`` with ``cols`` the apparent
    ``mag_{g,r,z}_desi`` and each component's flux ``_flux_{bulge,disc}_{g,r,z}`` (nanomaggies),
    ``mag_abs`` the absolute magnitude per band, ``d_ang`` the angular-diameter distance (Mpc)."""
    # Rest-frame colours: red bulge; disc bluer at higher sSFR.
    gr_b = 0.78 + 0.03 * g[:, 3]
    rz_b = 0.42 + 0.03 * g[:, 3]
    gr_d = np.clip(0.50 - 0.22 * (ssfr + 10.3) + 0.04 * g[:, 4], 0.15, 0.85)
    rz_d = 0.12 + 0.45 * gr_d
    # Light-weighted rest colours of the whole galaxy (r-band fractions bt, 1 - bt).
    frac_g = bt * 10 ** (-0.4 * gr_b) + (1 - bt) * 10 ** (-0.4 * gr_d)  # L_g / L_r, AB units
    frac_z = bt * 10 ** (0.4 * rz_b) + (1 - bt) * 10 ** (0.4 * rz_d)  # L_z / L_r
    gr_tot = -2.5 * np.log10(frac_g)
    rz_tot = 2.5 * np.log10(frac_z)

    # Absolute magnitudes: log M/L_r = -0.306 + 1.097 (g - r) (Bell & de Jong 2001) + scatter.
    log_ml = -0.306 + 1.097 * gr_tot + 0.08 * g[:, 5]
    mag_abs_r = 4.65 - 2.5 * (logm - log_ml)
    mag_abs = {"g": mag_abs_r + gr_tot, "r": mag_abs_r, "z": mag_abs_r - rz_tot}

    # Apparent magnitudes: distance modulus plus a crude k-correction per band.
    dc = _comoving_distance_mpc(z, cfg.z_max)
    d_lum, d_ang = dc * (1 + z), dc / (1 + z)
    dist_mod = 5 * np.log10(d_lum * 1e5)  # d_L in units of 10 pc
    kcorr = {"g": 2.0 * z, "r": 0.8 * z, "z": 0.4 * z}
    rest_offset = {  # component absolute magnitude in band b minus the galaxy's M_r
        ("bulge", "g"): gr_b, ("bulge", "r"): 0.0, ("bulge", "z"): -rz_b,
        ("disc", "g"): gr_d, ("disc", "r"): 0.0, ("disc", "z"): -rz_d,
    }
    comp_frac = {"bulge": bt, "disc": 1 - bt}
    cols: dict[str, Any] = {}
    for band in _BANDS:
        total = 0.0
        for comp in ("bulge", "disc"):
            m = mag_abs_r - 2.5 * np.log10(comp_frac[comp]) + rest_offset[comp, band]
            flux = 10 ** (-0.4 * (m + dist_mod + kcorr[band] - _ZP))  # nanomaggies
            cols[f"_flux_{comp}_{band}"] = flux
            total = total + flux
        cols[f"mag_{band}_desi"] = _ZP - 2.5 * np.log10(total)
    return cols, mag_abs, d_ang


def _sizes(cfg: SyntheticConfig, logm: np.ndarray, bt: np.ndarray, g: np.ndarray, d_ang: np.ndarray) -> dict[str, Any]:
    """Half-light radii in pixels (bulge ``re_b``, disc ``re_d``, whole galaxy ``r50``) and the
    cap on a component's radius (``re_cap``)."""
    # Sizes: physical half-light radii (kpc) grow with mass; angles from D_A; capped in pixels.
    re_d_kpc = 10 ** (0.55 + 0.22 * (logm - 10.5) + 0.12 * g[:, 6])
    re_b_kpc = 10 ** (0.22 + 0.55 * (logm - 10.5) + 0.12 * g[:, 7])
    kpc_per_px = d_ang * 1e3 * np.deg2rad(cfg.pixel_scale / 3600)
    re_cap = cfg.max_re_frac * cfg.image_size
    re_d_px = np.clip(re_d_kpc / kpc_per_px, 0.5, re_cap)
    re_b_px = np.clip(re_b_kpc / kpc_per_px, 0.3, re_cap)
    return {"re_b": re_b_px, "re_d": re_d_px, "r50": _half_light_radius(bt, re_b_px, re_d_px), "re_cap": re_cap}


def _scene(cfg: SyntheticConfig, idx: np.ndarray, r50_px: np.ndarray, re_cap: float, mag_r: np.ndarray) -> dict[str, Any]:
    """The scene around the target, from its own stream (k = 2): a neighbour, an artefact and
    stars. Returns the flags ``has_nb``, ``has_art``, ``n_stars``, ``has_saturated``, the vote
    scatter ``gs`` and the private rendering columns ``private`` (``_nb_*``, ``_art_*``)."""
    us, ustar, gs = _scene_draws(cfg.seed, idx)
    has_nb = us[:, 0] < cfg.neighbour_fraction
    nb_r = (0.22 + 0.20 * us[:, 1]) * cfg.image_size  # 14-27 px from the centre at 64 px
    nb_angle = 2 * np.pi * us[:, 2]
    nb_dmag = 0.5 + 2.5 * us[:, 3]  # fainter than the target in r
    nb_re = np.clip((0.35 + 0.55 * us[:, 4]) * r50_px, 0.5, re_cap)  # and smaller
    nb_n = np.where(us[:, 5] < 0.35, 4, 1)  # early or late type, with matching colours
    nb_q = 0.3 + 0.7 * us[:, 6]
    nb_pa = np.pi * us[:, 7]
    nb_gr = np.where(nb_n == 4, 0.9 + 0.6 * us[:, 8], 0.4 + 0.6 * us[:, 8])  # observed g - r
    nb_rz = 0.15 + 0.45 * nb_gr
    nb_flux_r = np.where(has_nb, 10 ** (-0.4 * (mag_r + nb_dmag - _ZP)), 0.0)

    has_art = us[:, 9] < cfg.artifact_fraction
    art_kind = np.where(has_art, np.minimum((3 * us[:, 10]).astype(np.int64), 2), -1)

    n_stars = _star_count(cfg, us[:, 15])
    star_mag = _stars(cfg, ustar, n_stars)["mag_r"]
    private = {
        "_nb_dx": nb_r * np.cos(nb_angle), "_nb_dy": nb_r * np.sin(nb_angle),
        "_nb_re_px": nb_re, "_nb_n": nb_n, "_nb_q": nb_q, "_nb_pa": nb_pa,
        "_nb_flux_g": nb_flux_r * 10 ** (-0.4 * nb_gr), "_nb_flux_r": nb_flux_r, "_nb_flux_z": nb_flux_r * 10 ** (0.4 * nb_rz),
        "_art_kind": art_kind,  # -1 none, 0 satellite trail, 1 bad column, 2 missing-data strip
        **{f"_art_p{k}": us[:, 11 + k] for k in range(4)},  # the artefact's shape, uniform in [0, 1)
    }
    return {"has_nb": has_nb, "has_art": has_art, "n_stars": n_stars,
            "has_saturated": (star_mag < cfg.saturation_mag).any(axis=1), "gs": gs, "private": private}


def _votes(cfg: SyntheticConfig, bt: np.ndarray, r50_px: np.ndarray, axis_ratio: np.ndarray, scene: dict) -> dict[str, np.ndarray]:
    """Galaxy Zoo DESI-like vote fractions from the truths, with scatter. The first question's
    three answers (smooth / featured / artefact) sum to 1; edge-on is asked of discs."""
    gs = scene["gs"]
    r50_arcsec = r50_px * cfg.pixel_scale
    p_feat = _sigmoid(6.0 * (0.45 - bt) + 1.2 * np.log(r50_arcsec / 0.8) + 0.5 * gs[:, 0])
    frac_art = _sigmoid(-3.5 + 4.2 * scene["has_art"] + 1.5 * scene["has_saturated"] + 0.5 * gs[:, 2])
    frac_edge = _sigmoid((0.38 - axis_ratio) / 0.12 - 4.0 * np.maximum(bt - 0.5, 0.0) + 0.5 * gs[:, 1])
    # Spiral arms wind tighter in bulgier discs (the Hubble sequence, Sa -> Sc): volunteers
    # answering "tight" follow B/T with scatter. The stamps draw no arms, so the bulge is the
    # only trace of it an image carries.
    frac_tight = _sigmoid(5.0 * (bt - 0.3) + 0.6 * gs[:, 3])
    return {
        "smooth-or-featured_smooth_fraction": (1 - frac_art) * (1 - p_feat),
        "smooth-or-featured_featured-or-disk_fraction": (1 - frac_art) * p_feat,
        "smooth-or-featured_artifact_fraction": frac_art,
        "disk-edge-on_yes_fraction": frac_edge,
        "spiral-winding_tight_fraction": frac_tight,
    }


def sample_properties(cfg: SyntheticConfig, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Draw the physical properties and rendering parameters of galaxies ``start..stop-1``.

    Row ``i`` depends only on ``(cfg.seed, i)`` and the physics settings, never on the range.

    Args:
        cfg: Generation settings.
        start: First galaxy index.
        stop: One past the last index (default: all ``n_train + n_val + n_test``).

    Returns:
        One row per galaxy: the public truth columns (see :func:`generate`) plus private
        rendering columns starting with ``_`` (fluxes in nanomaggies, radii in pixels, ...).
    """
    stop = cfg.n_train + cfg.n_val + cfg.n_test if stop is None else stop
    u, g = _draws(cfg.seed, range(start, stop))
    z = cfg.z_min + (cfg.z_max - cfg.z_min) * u[:, 0]
    logm = np.clip(cfg.logm_mean + cfg.logm_sigma * g[:, 0], 9.0, 11.8)
    ssfr, bt = _star_formation(logm, u, g)
    cols, mag_abs, d_ang = _photometry(cfg, z, logm, ssfr, bt, g)
    size = _sizes(cfg, logm, bt, g, d_ang)
    # Shapes: random inclination (intrinsic disc thickness 0.12), rounder bulge, random PA.
    q_d = np.sqrt(u[:, 2] ** 2 * (1 - 0.12**2) + 0.12**2)
    q_b = 0.65 + 0.35 * u[:, 3]
    axis_ratio = bt * q_b + (1 - bt) * q_d  # light-weighted: what a volunteer sees
    idx = np.arange(start, stop)
    scene = _scene(cfg, idx, size["r50"], size["re_cap"], cols["mag_r_desi"])

    n_tr, n_va = cfg.n_train, cfg.n_val
    ids = [f"syn{i:07d}" for i in idx]
    df = pd.DataFrame(
        {
            "id": ids,
            "split": np.where(idx < n_tr, "train", np.where(idx < n_tr + n_va, "validation", "test")),
            "image_path": [f"images/{i}.png" for i in ids],
            "redshift": z,
            **{f"mag_{b}_desi": cols[f"mag_{b}_desi"] for b in _BANDS},
            "g_r": cols["mag_g_desi"] - cols["mag_r_desi"],  # observed colours (the paper's g-r, r-z)
            "r_z": cols["mag_r_desi"] - cols["mag_z_desi"],
            **{f"mag_abs_{b}_photoz": mag_abs[b] for b in _BANDS},
            "mass_med_photoz": logm,
            "ssfr_med_photoz": ssfr,
            "est_petro_th50": size["r50"] * cfg.pixel_scale,  # arcsec, intrinsic (before PSF)
            "axis_ratio": axis_ratio,  # light-weighted axis ratio
            "bulge_fraction": bt,  # r-band bulge-to-total light ratio
            **_votes(cfg, bt, size["r50"], axis_ratio, scene),
            "has_neighbour": scene["has_nb"].astype(np.int64),  # 0/1: a second galaxy off centre
            "has_artifact": scene["has_art"].astype(np.int64),  # 0/1: a trail, bad column or data gap
            "n_stars": scene["n_stars"],  # foreground stars in the stamp
        }
    )
    for key in sorted(k for k in cols if k.startswith("_")):
        df[key] = cols[key]
    df["_re_b_px"], df["_re_d_px"] = size["re_b"], size["re_d"]
    # Random position angle; sub-pixel centring jitter (both axes share it; px).
    df["_q_b"], df["_q_d"], df["_pa"], df["_offset"] = q_b, q_d, np.pi * u[:, 4], u[:, 5] - 0.5
    for key, value in scene["private"].items():
        df[key] = value
    return df


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _profile_maps(
    re_px: np.ndarray, q: np.ndarray, pa: np.ndarray, dx: np.ndarray, dy: np.ndarray, n: int,
    size: int, ss: int, psf_sigma_px: float, centred: bool = True,
) -> np.ndarray:
    """Unit-flux Sersic maps (B, size, size), PSF-convolved, integrated over pixels.

    ``dx, dy`` place each profile's centre relative to the stamp centre (px). A centred map is
    scaled so that the stamp holds the profile's analytic light fraction inside an elliptical
    radius of half the stamp (the light beyond is lost, as in a real cutout); this also corrects
    the under-sampled cusp of small n=4 bulges. An off-centre map (a neighbour, ``centred``
    False) is scaled by the profile's analytic total instead, so the part off the stamp is lost.
    """
    f32 = np.float32
    c = (np.arange(size * ss, dtype=f32) + 0.5) / ss - size / 2  # sub-pixel centres, px
    x = c[None, None, :] - dx[:, None, None].astype(f32)  # (B, 1, S)
    y = c[None, :, None] - dy[:, None, None].astype(f32)  # (B, S, 1)
    cos = (np.cos(pa) / re_px)[:, None, None].astype(f32)  # 1 / r_e folded into the rotation
    sin = (np.sin(pa) / re_px)[:, None, None].astype(f32)
    inv_q = (1.0 / q)[:, None, None].astype(f32)
    # Elliptical radius in units of r_e, (B, S, S); big arrays are updated in place.
    r2 = x * cos + y * sin  # along the major axis
    r2 *= r2
    minor = y * (cos * inv_q) - x * (sin * inv_q)
    minor *= minor
    r2 += minor
    del minor
    arg = np.sqrt(r2, out=r2)  # r / r_e
    if n == 4:
        np.sqrt(arg, out=arg)
        np.sqrt(arg, out=arg)  # (r / r_e) ** (1 / 4)
    arg *= f32(-_B_SERSIC[n])  # the constant exp(b_n) drops out in the normalisation below
    prof = np.exp(arg, out=arg)  # (B, S, S), S = size * ss
    if ss > 1:  # integrate over each pixel's ss x ss sub-pixels
        rows = prof[:, 0::ss]
        for k in range(1, ss):
            rows = rows + prof[:, k::ss]
        prof = rows[:, :, 0::ss]
        for k in range(1, ss):
            prof = prof + rows[:, :, k::ss]
    if centred:
        frac_in = _sersic_cum((size / 2) / re_px, n).astype(np.float32)
        prof *= (frac_in / prof.sum(axis=(1, 2)))[:, None, None]
    else:  # integral of exp(-b (r/r_e)^(1/n)) over the plane, in sub-pixels
        total = 2 * np.pi * q * re_px**2 * n * special.gamma(2 * n) / _B_SERSIC[n] ** (2 * n) * ss**2
        prof *= (1.0 / total).astype(np.float32)[:, None, None]
    # PSF on the pixel grid (convolution commutes with the pixel integration above).
    return ndimage.gaussian_filter(prof, sigma=(0, psf_sigma_px, psf_sigma_px), mode="constant", truncate=4.0)


def _gauss_1d(centre: np.ndarray, sigma: float, size: int) -> np.ndarray:
    """Pixel-integrated unit Gaussians ``(..., size)`` centred at ``centre`` (pixel coordinates)."""
    edges = (np.arange(size + 1) - centre[..., None]) / (np.sqrt(2) * sigma)
    return 0.5 * np.diff(special.erf(edges), axis=-1)


def _star_planes(stars: dict[str, np.ndarray], cfg: SyntheticConfig, psf_sigma_px: float) -> np.ndarray:
    """Stars in stretch units (band flux times its ``band_scales``), ``(3, B, H, W)`` float32.

    Every star is a sum of separable pixel-integrated Gaussians (``_STAR_PSF``). Only the stars
    present are drawn, and each stamp adds its stars one by one in their order, so a stamp's
    pixels do not depend on the batch. Cores are clipped at the peak of a star of
    ``saturation_mag``, the same level in every band (a flat white core, as a saturated CCD),
    and brighter stars get diffraction spikes along both pixel axes and a vertical bleed trail.
    """
    size, f32 = cfg.image_size, np.float32
    x, y, flux = stars["x"], stars["y"], stars["flux"]  # (B, M), (B, M), (B, M, 3)
    out = np.zeros((3, x.shape[0], size, size), f32)
    b_idx, m_idx = np.nonzero(flux[..., 1] > 0)  # present stars, stamp by stamp, in order
    xs, ys = x[b_idx, m_idx], y[b_idx, m_idx]
    psf = np.zeros((len(b_idx), size, size), f32)  # (R, H, W) unit-flux star images
    for weight, k in _STAR_PSF:
        gy = (weight * _gauss_1d(ys, k * psf_sigma_px, size)).astype(f32)
        gx = _gauss_1d(xs, k * psf_sigma_px, size).astype(f32)
        psf += gy[:, :, None] * gx[:, None, :]
    scaled = (flux[b_idx, m_idx] * np.asarray(cfg.band_scales)).astype(f32)  # (R, 3)
    for slot in range(int(m_idx.max(initial=-1)) + 1):  # star 0 of every stamp, then star 1, ...
        rows = np.nonzero(m_idx == slot)[0]
        for j in range(3):
            out[j, b_idx[rows]] += scaled[rows, j, None, None] * psf[rows]
    # Clip level: the peak pixel of a star of saturation_mag centred on a pixel, in r.
    centre = np.array([size / 2 + 0.5])
    peak = sum(w * _gauss_1d(centre, k * psf_sigma_px, size).max() ** 2 for w, k in _STAR_PSF)
    level = f32(10 ** (-0.4 * (cfg.saturation_mag - _ZP)) * peak * cfg.band_scales[1])
    grid = np.arange(size) + 0.5  # pixel centres
    for b, m in zip(*np.nonzero(stars["mag_r"] < cfg.saturation_mag)):
        excess = 10 ** (0.4 * (cfg.saturation_mag - stars["mag_r"][b, m]))  # flux / saturation
        length = 2.0 + 3.0 * np.sqrt(excess)  # e-folding length of the spikes, px
        thin_y, thin_x = _gauss_1d(y[b, m], 0.5, size), _gauss_1d(x[b, m], 0.5, size)
        spikes = np.outer(thin_y, np.exp(-np.abs(grid - x[b, m]) / length))
        spikes += np.outer(np.exp(-np.abs(grid - y[b, m]) / length), thin_x)
        spikes *= 0.5 * np.sqrt(excess)
        half = 2.0 + 4.0 * np.sqrt(excess - 1)  # bleed half-length along the column, px
        box = np.clip(half + 0.5 - np.abs(grid - y[b, m]), 0.0, 1.0)
        bleed = np.outer(box, _gauss_1d(x[b, m], 0.5, size) / 0.68) * level
        out[:, b] += (spikes + bleed).astype(f32)
    return np.minimum(out, level, out=out)  # saturated: flat and white


def _artefacts(props: pd.DataFrame, cfg: SyntheticConfig, planes: list[np.ndarray], flux_stage: bool) -> None:
    """Add the drawn artefacts to the band planes ``(B, H, W)`` in place.

    With ``flux_stage`` (nanomaggies, before the band scales) satellite trails and bad columns
    are added; otherwise (after the black level) missing-data strips are zeroed.
    """
    size = cfg.image_size
    kind = props["_art_kind"].to_numpy()
    par = props[[f"_art_p{k}" for k in range(4)]].to_numpy()
    c = np.arange(size) - size / 2 + 0.5  # pixel centres relative to the stamp centre
    for b in np.nonzero(kind >= 0)[0]:
        p0, p1, p2, p3 = par[b]
        band = min(int(3 * p2), 2)
        if flux_stage and kind[b] == 0:  # satellite trail: a sharp line in one exposure's band
            theta, rho = np.pi * p0, (p1 - 0.5) * 0.8 * size
            dist = c[None, :] * np.sin(theta) - c[:, None] * np.cos(theta) - rho
            amp = 0.015 * 10 ** (1.0 * p3)  # peak nanomaggies per pixel: 0.015-0.15
            planes[band][b] += np.float32(amp) * np.exp(-0.5 * (dist / 0.7) ** 2).astype(np.float32)
        elif flux_stage and kind[b] == 1:  # bad column in one band, from a row to an edge
            col = min(int(p0 * size), size - 1)
            rows = slice(int(0.8 * p1 * size), size) if p3 < 0.5 else slice(0, int((0.2 + 0.8 * p1) * size))
            cols = slice(col, min(col + (2 if p3 > 0.8 else 1), size))
            planes[band][b, rows, cols] += np.float32(0.05 * 10 ** (1.0 * p3))
        elif not flux_stage and kind[b] == 2:  # no data: one band (a colour cast) or all (black)
            width = 4 + int(p1 * 0.3 * size)
            side = min(int(4 * p0), 3)
            region = [
                (slice(0, width), slice(None)), (slice(size - width, size), slice(None)),
                (slice(None), slice(0, width)), (slice(None), slice(size - width, size)),
            ][side]
            for j in ((0, 1, 2) if p3 < 0.5 else (band,)):
                planes[j][(b, *region)] = 0.0


def render_batch(props: pd.DataFrame, cfg: SyntheticConfig) -> np.ndarray:
    """Render galaxies to 8-bit RGB stamps (B, H, W, 3), RGB = (z, r, g) as in Legacy Survey.

    Args:
        props: Rows of :func:`sample_properties` (public and private columns).
        cfg: Generation settings (image size, PSF, noise, stretch, stamp features).

    Returns:
        uint8 array ``(B, image_size, image_size, 3)``.
    """
    size, ss = cfg.image_size, cfg.supersample
    psf_sigma_px = cfg.psf_fwhm / cfg.pixel_scale / (2 * np.sqrt(2 * np.log(2)))
    pa, offset = props["_pa"].to_numpy(), props["_offset"].to_numpy()
    maps = {}
    for comp, n in (("b", 4), ("d", 1)):  # bulge: de Vaucouleurs; disc: exponential
        re_px, q = props[f"_re_{comp}_px"].to_numpy(), props[f"_q_{comp}"].to_numpy()
        maps[comp] = _profile_maps(re_px, q, pa, offset, offset, n, size, ss, psf_sigma_px)
    bulge, disc = maps["b"], maps["d"]  # (B, H, W) each, unit flux

    # Sky noise from each galaxy's own generator (SeedSequence([seed, i, 1])).
    B = len(props)
    idx = np.array([int(gid[3:]) for gid in props["id"]])
    noise = np.empty((B, 3, size, size), np.float32)
    for k, i in enumerate(idx):
        noise[k] = _galaxy_rng(cfg.seed, i, 1).standard_normal((3, size, size), dtype=np.float32)

    # Flux images in nanomaggies per pixel, bands (g, r, z); (B, H, W) each.
    planes = []
    for band in _BANDS:
        fb = props[f"_flux_bulge_{band}"].to_numpy(np.float32)[:, None, None]
        fd = props[f"_flux_disc_{band}"].to_numpy(np.float32)[:, None, None]
        img = fb * bulge
        img += fd * disc
        planes.append(img)
    # Neighbours, grouped by Sersic index so each group is one vectorised call.
    nb_n = props["_nb_n"].to_numpy()
    for n in (1, 4):
        sel = np.nonzero((props["has_neighbour"].to_numpy() == 1) & (nb_n == n))[0]
        if len(sel) == 0:
            continue
        nb = props.iloc[sel]
        nb_maps = _profile_maps(
            nb["_nb_re_px"].to_numpy(), nb["_nb_q"].to_numpy(), nb["_nb_pa"].to_numpy(),
            nb["_nb_dx"].to_numpy(), nb["_nb_dy"].to_numpy(), n, size, ss, psf_sigma_px, centred=False,
        )
        for j, band in enumerate(_BANDS):
            planes[j][sel] += nb[f"_nb_flux_{band}"].to_numpy(np.float32)[:, None, None] * nb_maps
    _artefacts(props, cfg, planes, flux_stage=True)

    # Stars, already in stretch units (their saturation is the same in every band).
    n_stars = props["n_stars"].to_numpy()
    stars = None
    if n_stars.any():
        _, ustar, _ = _scene_draws(cfg.seed, idx)
        stars = _star_planes(_stars(cfg, ustar, n_stars), cfg, psf_sigma_px)

    for j in range(3):
        img = planes[j]
        img += np.float32(cfg.sky_noise) * noise[:, j]
        img *= np.float32(cfg.band_scales[j])
        if stars is not None:
            img += stars[j]
        img += np.float32(cfg.stretch_m)
    _artefacts(props, cfg, planes, flux_stage=False)
    for img in planes:
        np.maximum(img, 0.0, out=img)

    # Colour-preserving asinh stretch (Lupton et al. 2004; Legacy Survey sdss_rgb style):
    # every band is multiplied by asinh(Q I) / (sqrt(Q) I) of the mean intensity I.
    Q = np.float32(cfg.stretch_q)
    intensity = (planes[0] + planes[1] + planes[2]) / np.float32(3.0)
    gain = np.arcsinh(Q * intensity) / (np.sqrt(Q) * np.maximum(intensity, np.float32(1e-12)))
    peak = np.maximum(np.maximum(planes[0], planes[1]), planes[2]) * gain
    gain /= np.maximum(peak, np.float32(1.0))  # saturate without changing the hue
    gain *= np.float32(255.0)
    # Planes (g, r, z) -> RGB = (z, r, g): z is red, g is blue, as in Legacy Survey cutouts.
    rgb = np.stack([planes[2] * gain, planes[1] * gain, planes[0] * gain], axis=-1)
    np.rint(rgb, out=rgb)
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)


def _render_chunk(cfg: SyntheticConfig, start: int, stop: int, image_dir: str) -> pd.DataFrame:
    """Worker: sample, render and write galaxies start..stop-1; returns their public metadata."""
    from PIL import Image

    props = sample_properties(cfg, start, stop)
    images = render_batch(props, cfg)
    for gid, img in zip(props["id"], images):
        Image.fromarray(img, mode="RGB").save(
            os.path.join(image_dir, f"{gid}.png"), format="PNG", compress_level=cfg.png_compress_level
        )
    return props[[c for c in props.columns if not c.startswith("_")]]


def _check_config(cfg: SyntheticConfig) -> int:
    """Check the settings :func:`generate` cannot work with; returns the number of galaxies."""
    n_all = cfg.n_train + cfg.n_val + cfg.n_test
    if min(cfg.n_train, cfg.n_val, cfg.n_test) < 0 or n_all == 0:
        raise ValueError(f"SyntheticConfig needs non-negative split sizes with a positive sum, got {cfg}")
    if cfg.image_size < 8:
        raise ValueError(f"SyntheticConfig.image_size must be at least 8 px, got {cfg.image_size}")
    for name in ("neighbour_fraction", "artifact_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"SyntheticConfig.{name} must lie in [0, 1], got {getattr(cfg, name)}")
    if cfg.stars_per_stamp < 0:
        raise ValueError(f"SyntheticConfig.stars_per_stamp must be >= 0, got {cfg.stars_per_stamp}")
    if not cfg.star_mag_range[0] < cfg.star_mag_range[1]:
        raise ValueError(
            f"SyntheticConfig.star_mag_range must be (bright, faint) with bright < faint, "
            f"got {cfg.star_mag_range}"
        )
    return n_all


def generate(out_dir: Path, cfg: SyntheticConfig, log: Callable[[str], Any] = print) -> pd.DataFrame:
    """Generate the synthetic galaxy set: PNG stamps plus a metadata table.

    Writes ``out_dir/images/{id}.png`` (8-bit RGB, RGB = (z, r, g)) and
    ``out_dir/metadata.parquet`` with columns ``id`` ("syn0000042"), ``split`` ("train",
    "validation", "test"), ``image_path`` ("images/syn0000042.png", relative to ``out_dir``) and
    the truths: ``redshift``, ``mag_{g,r,z}_desi`` (apparent AB), the colours ``g_r`` and ``r_z``
    (differences of those), ``mag_abs_{g,r,z}_photoz``
    (rest-frame absolute), ``mass_med_photoz`` (log10 M*/Msun), ``ssfr_med_photoz``
    (log10 sSFR/yr^-1), ``est_petro_th50`` (intrinsic half-light semi-major axis, arcsec),
    ``axis_ratio`` (light-weighted), ``bulge_fraction`` (r-band B/T), Galaxy Zoo DESI-like
    vote fractions ``smooth-or-featured_{smooth,featured-or-disk,artifact}_fraction`` (summing
    to 1), ``disk-edge-on_yes_fraction`` and ``spiral-winding_tight_fraction`` (rising with
    B/T), and the stamp's integer flags ``has_neighbour``
    (0/1), ``has_artifact`` (0/1) and ``n_stars`` (a count). Left out on purpose:
    the position angle (circular, not a probe target) and a light-weighted Sersic index
    (1 + 3 B/T here, so it would only repeat ``bulge_fraction``).

    Args:
        out_dir: Output folder (created).
        cfg: Generation settings.
        log: Called with progress lines (about every 10%) and a final summary.

    Returns:
        The metadata table (also written to ``metadata.parquet``).

    Raises:
        ValueError: On non-positive counts, an image size that cannot hold a galaxy, a fraction
            outside [0, 1], a negative star rate or an inverted star magnitude range.
    """
    out_dir = Path(out_dir)
    n_all = _check_config(cfg)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    bounds = [(s, min(s + cfg.chunk_size, n_all)) for s in range(0, n_all, cfg.chunk_size)]
    log(
        f"generating {n_all} synthetic galaxies ({cfg.n_train} train / {cfg.n_val} validation / "
        f"{cfg.n_test} test), {cfg.image_size}px at {cfg.pixel_scale}\"/px, seed {cfg.seed}, "
        f"{cfg.workers} worker(s) -> {out_dir}"
    )
    t0 = time.perf_counter()
    parts: list[pd.DataFrame] = []
    progress = Progress(n_all, log)
    for part in in_order([(cfg, s, e, str(image_dir)) for s, e in bounds], _render_chunk, cfg.workers):
        parts.append(part)
        progress.update(len(part))

    meta = pd.concat(parts, ignore_index=True)
    atomic_write(out_dir / "metadata.parquet", lambda p: meta.to_parquet(p, index=False))
    dt = time.perf_counter() - t0
    log(
        f"generated {n_all} galaxies in {dt:.1f}s ({n_all / max(dt, 1e-9):.0f}/s); "
        f"mag_r {meta['mag_r_desi'].min():.1f}-{meta['mag_r_desi'].max():.1f}, "
        f"half-light radius {meta['est_petro_th50'].median():.2f}\" median"
    )
    return meta
