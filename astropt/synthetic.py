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

Every galaxy draws its random numbers from its own generator, seeded from ``(seed, index)``,
so the output does not depend on ``workers`` or chunking. Galaxies are assigned to splits in
index order: the first ``n_train`` are "train", then ``n_val`` "validation", then ``n_test``
"test" (galaxies are independent draws, so this is as random as a permutation).

Example::

    from astropt.synthetic import SyntheticConfig, generate
    meta = generate(Path("resources/synthetic"), SyntheticConfig(workers=2))
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import ndimage, special

__all__ = ["SyntheticConfig", "generate", "sample_properties", "render_batch"]

SPLITS = ("train", "validation", "test")
_ZP = 22.5  # Legacy Survey magnitude zero point: flux in nanomaggies = 10**(-0.4 (m - 22.5))
_BANDS = ("g", "r", "z")
_B_SERSIC = {1: 1.6783469900166612, 4: 7.669249443105143}  # b_n: half the light inside r_e
_N_UNIFORM, _N_NORMAL = 6, 8  # random numbers per galaxy for its properties


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
    seed: int = 0  # master seed; galaxy i draws from SeedSequence([seed, i, 0|1])
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


def _draws(seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-galaxy uniforms (N, 6) and normals (N, 8), galaxy i from SeedSequence([seed, i, 0])."""
    u = np.empty((stop - start, _N_UNIFORM))
    g = np.empty((stop - start, _N_NORMAL))
    for k, i in enumerate(range(start, stop)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, 0]))
        u[k] = rng.random(_N_UNIFORM)
        g[k] = rng.standard_normal(_N_NORMAL)
    return u, g


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
    n_all = cfg.n_train + cfg.n_val + cfg.n_test
    stop = n_all if stop is None else stop
    u, g = _draws(cfg.seed, start, stop)

    z = cfg.z_min + (cfg.z_max - cfg.z_min) * u[:, 0]
    logm = np.clip(cfg.logm_mean + cfg.logm_sigma * g[:, 0], 9.0, 11.8)

    # Star formation: quenched fraction rises with mass; SF sequence sSFR falls with mass.
    p_quenched = 1.0 / (1.0 + np.exp(-(logm - 10.6) / 0.25))
    quenched = u[:, 1] < p_quenched
    ssfr = np.where(
        quenched,
        -11.7 + 0.35 * g[:, 1],
        -9.9 - 0.35 * (logm - 10.0) + 0.3 * g[:, 1],
    )

    # Bulge-to-total (r band): high for quenched / massive galaxies.
    logit_bt = 1.6 * (-(ssfr + 10.6)) + 1.0 * (logm - 10.5) - 0.4 + 0.5 * g[:, 2]
    bt = np.clip(1.0 / (1.0 + np.exp(-logit_bt)), 0.02, 0.98)

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
    mag_abs_g = mag_abs_r + gr_tot
    mag_abs_z = mag_abs_r - rz_tot

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

    # Sizes: physical half-light radii (kpc) grow with mass; angles from D_A; capped in pixels.
    re_d_kpc = 10 ** (0.55 + 0.22 * (logm - 10.5) + 0.12 * g[:, 6])
    re_b_kpc = 10 ** (0.22 + 0.55 * (logm - 10.5) + 0.12 * g[:, 7])
    kpc_per_px = d_ang * 1e3 * np.deg2rad(cfg.pixel_scale / 3600)
    re_cap = cfg.max_re_frac * cfg.image_size
    re_d_px = np.clip(re_d_kpc / kpc_per_px, 0.5, re_cap)
    re_b_px = np.clip(re_b_kpc / kpc_per_px, 0.3, re_cap)
    r50_px = _half_light_radius(bt, re_b_px, re_d_px)

    # Shapes: random inclination (intrinsic disc thickness 0.12), rounder bulge, random PA.
    cos_i = u[:, 2]
    q_d = np.sqrt(cos_i**2 * (1 - 0.12**2) + 0.12**2)
    q_b = 0.65 + 0.35 * u[:, 3]
    pa = np.pi * u[:, 4]
    offset = u[:, 5] - 0.5  # sub-pixel centring jitter (both axes share it; px)

    idx = np.arange(start, stop)
    n_tr, n_va = cfg.n_train, cfg.n_val
    split = np.where(idx < n_tr, "train", np.where(idx < n_tr + n_va, "validation", "test"))
    ids = [f"syn{i:07d}" for i in idx]
    df = pd.DataFrame(
        {
            "id": ids,
            "split": split,
            "image_path": [f"images/{i}.png" for i in ids],
            "redshift": z,
            "mag_g_desi": cols["mag_g_desi"],
            "mag_r_desi": cols["mag_r_desi"],
            "mag_z_desi": cols["mag_z_desi"],
            "mag_abs_g_photoz": mag_abs_g,
            "mag_abs_r_photoz": mag_abs_r,
            "mag_abs_z_photoz": mag_abs_z,
            "mass_med_photoz": logm,
            "ssfr_med_photoz": ssfr,
            "est_petro_th50": r50_px * cfg.pixel_scale,  # arcsec, intrinsic (before PSF)
            "axis_ratio": bt * q_b + (1 - bt) * q_d,  # light-weighted axis ratio
            "bulge_fraction": bt,  # r-band bulge-to-total light ratio
        }
    )
    for key in sorted(k for k in cols if k.startswith("_")):
        df[key] = cols[key]
    df["_re_b_px"], df["_re_d_px"] = re_b_px, re_d_px
    df["_q_b"], df["_q_d"], df["_pa"], df["_offset"] = q_b, q_d, pa, offset
    return df


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _profile_maps(
    re_px: np.ndarray, q: np.ndarray, pa: np.ndarray, offset: np.ndarray, n: int,
    size: int, ss: int, psf_sigma_px: float,
) -> np.ndarray:
    """Unit-flux Sersic maps (B, size, size), PSF-convolved, integrated over pixels.

    Each map is scaled so that the stamp holds the profile's analytic light fraction inside an
    elliptical radius of half the stamp (the light beyond is lost, as in a real cutout); this
    also corrects the under-sampled cusp of small n=4 bulges.
    """
    f32 = np.float32
    c = (np.arange(size * ss, dtype=f32) + 0.5) / ss - size / 2  # sub-pixel centres, px
    x = c[None, None, :] - offset[:, None, None].astype(f32)  # (B, 1, S)
    y = c[None, :, None] - offset[:, None, None].astype(f32)  # (B, S, 1)
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
    frac_in = _sersic_cum((size / 2) / re_px, n).astype(np.float32)
    prof *= (frac_in / prof.sum(axis=(1, 2)))[:, None, None]
    # PSF on the pixel grid (convolution commutes with the pixel integration above).
    return ndimage.gaussian_filter(prof, sigma=(0, psf_sigma_px, psf_sigma_px), mode="constant", truncate=4.0)


def render_batch(props: pd.DataFrame, cfg: SyntheticConfig) -> np.ndarray:
    """Render galaxies to 8-bit RGB stamps (B, H, W, 3), RGB = (z, r, g) as in Legacy Survey.

    Args:
        props: Rows of :func:`sample_properties` (public and private columns).
        cfg: Generation settings (image size, PSF, noise, stretch).

    Returns:
        uint8 array ``(B, image_size, image_size, 3)``.
    """
    size, ss = cfg.image_size, cfg.supersample
    psf_sigma_px = cfg.psf_fwhm / cfg.pixel_scale / (2 * np.sqrt(2 * np.log(2)))
    pa, offset = props["_pa"].to_numpy(), props["_offset"].to_numpy()
    maps = {}
    for comp, n in (("b", 4), ("d", 1)):  # bulge: de Vaucouleurs; disc: exponential
        re_px, q = props[f"_re_{comp}_px"].to_numpy(), props[f"_q_{comp}"].to_numpy()
        maps[comp] = _profile_maps(re_px, q, pa, offset, n, size, ss, psf_sigma_px)
    bulge, disc = maps["b"], maps["d"]  # (B, H, W) each, unit flux

    # Sky noise from each galaxy's own generator (SeedSequence([seed, i, 1])).
    B = len(props)
    noise = np.empty((B, 3, size, size), np.float32)
    for k, gid in enumerate(props["id"]):
        i = int(gid[3:])
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, 1]))
        noise[k] = rng.standard_normal((3, size, size), dtype=np.float32)

    # Flux images in nanomaggies per pixel, bands (g, r, z), scaled for the stretch; (B, H, W) each.
    planes = []
    for j, band in enumerate(_BANDS):
        fb = props[f"_flux_bulge_{band}"].to_numpy(np.float32)[:, None, None]
        fd = props[f"_flux_disc_{band}"].to_numpy(np.float32)[:, None, None]
        img = fb * bulge
        img += fd * disc
        img += np.float32(cfg.sky_noise) * noise[:, j]
        img *= np.float32(cfg.band_scales[j])
        img += np.float32(cfg.stretch_m)
        planes.append(np.maximum(img, 0.0, out=img))

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


def generate(out_dir: Path, cfg: SyntheticConfig, log: Callable[[str], Any] = print) -> pd.DataFrame:
    """Generate the synthetic galaxy set: PNG stamps plus a metadata table.

    Writes ``out_dir/images/{id}.png`` (8-bit RGB, RGB = (z, r, g)) and
    ``out_dir/metadata.parquet`` with columns ``id`` ("syn0000042"), ``split`` ("train",
    "validation", "test"), ``image_path`` ("images/syn0000042.png", relative to ``out_dir``) and
    the truths: ``redshift``, ``mag_{g,r,z}_desi`` (apparent AB), ``mag_abs_{g,r,z}_photoz``
    (rest-frame absolute), ``mass_med_photoz`` (log10 M*/Msun), ``ssfr_med_photoz``
    (log10 sSFR/yr^-1), ``est_petro_th50`` (intrinsic half-light semi-major axis, arcsec),
    ``axis_ratio`` (light-weighted), ``bulge_fraction`` (r-band B/T). Left out on purpose:
    the position angle (circular, not a probe target) and a light-weighted Sersic index
    (1 + 3 B/T here, so it would only repeat ``bulge_fraction``).

    Args:
        out_dir: Output folder (created).
        cfg: Generation settings.
        log: Called with progress lines (about every 10%) and a final summary.

    Returns:
        The metadata table (also written to ``metadata.parquet``).

    Raises:
        ValueError: On non-positive counts or an image size that cannot hold a galaxy.
    """
    out_dir = Path(out_dir)
    n_all = cfg.n_train + cfg.n_val + cfg.n_test
    if min(cfg.n_train, cfg.n_val, cfg.n_test) < 0 or n_all == 0:
        raise ValueError(f"SyntheticConfig needs non-negative split sizes with a positive sum, got {cfg}")
    if cfg.image_size < 8:
        raise ValueError(f"SyntheticConfig.image_size must be at least 8 px, got {cfg.image_size}")
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
    done, next_log = 0, 0.1

    def consume(part: pd.DataFrame) -> None:
        nonlocal done, next_log
        parts.append(part)
        done += len(part)
        if done / n_all >= next_log or done == n_all:
            dt = time.perf_counter() - t0
            rate = done / max(dt, 1e-9)
            log(
                f"  {done}/{n_all} galaxies ({100 * done / n_all:.0f}%), {rate:.0f}/s, "
                f"ETA {(n_all - done) / rate:.0f}s"
            )
            while next_log <= done / n_all:
                next_log += 0.1

    if cfg.workers <= 1:
        for s, e in bounds:
            consume(_render_chunk(cfg, s, e, str(image_dir)))
    else:
        with cf.ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            futures = [pool.submit(_render_chunk, cfg, s, e, str(image_dir)) for s, e in bounds]
            for fut in futures:
                consume(fut.result())

    meta = pd.concat(parts, ignore_index=True)
    tmp = out_dir / f"metadata.parquet.tmp-{os.getpid()}"
    meta.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "metadata.parquet")
    dt = time.perf_counter() - t0
    log(
        f"generated {n_all} galaxies in {dt:.1f}s ({n_all / max(dt, 1e-9):.0f}/s); "
        f"mag_r {meta['mag_r_desi'].min():.1f}-{meta['mag_r_desi'].max():.1f}, "
        f"half-light radius {meta['est_petro_th50'].median():.2f}\" median"
    )
    return meta
