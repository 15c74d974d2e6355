"""Land cover in parcels and patches."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from latentcube.synthetic._tables import BAR, CRO, DBF, ENF, GRA, URB, WAT, _smooth
from latentcube.synthetic.config import WorldConfig

# ------------------------------------------------------------------------------------- land cover


def _landcover(rng: np.random.Generator, n: int, cfg: WorldConfig, site_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Land cover (uint8 class codes) and parcel ids (int32) of an n x n grid.

    Fields and meadows are (anisotropic) Voronoi parcels, forests smooth-noise patches split into
    needle/broadleaf stands, water a meandering river or a lake, urban compact blobs. Tower cubes get a
    homogeneous stand/field of ``site_class`` around the centre pixel.
    """
    fr = np.asarray(cfg.landcover_fractions, np.float64)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    lc = np.zeros((n, n), np.uint8)

    # Water: river across the scene (2/3 of worlds) or a lake; width set to give the water fraction.
    if rng.random() < 0.67:
        amp, wl, ph = rng.uniform(0.05, 0.15) * n, rng.uniform(0.8, 1.6) * n, rng.uniform(0, 2 * np.pi)
        along, across = (xx, yy) if rng.random() < 0.5 else (yy, xx)  # flows west-east or north-south
        centre = rng.uniform(0.25, 0.75) * n + amp * np.sin(2 * np.pi * along / wl + ph) + 2.0 * _smooth(rng, (n, n), n / 8)
        water = np.abs(across - centre) < max(1.0, fr[WAT - 1] * n / 2)
    else:
        f = _smooth(rng, (n, n), n / 10) + 2.5 * np.exp(
            -(((yy - rng.uniform(0.2, 0.8) * n) ** 2 + (xx - rng.uniform(0.2, 0.8) * n) ** 2) / (0.15 * n) ** 2)
        )
        water = f > np.quantile(f, 1 - fr[WAT - 1])
    lc[water] = WAT

    # Forest patches: two-scale smooth noise thresholded to the forest share of the whole area.
    land = ~water
    ff = _smooth(rng, (n, n), 7.0) + 0.7 * _smooth(rng, (n, n), 20.0)
    forest_share = (fr[ENF - 1] + fr[DBF - 1]) / land.mean()
    forest = land & (ff >= np.quantile(ff[land], 1 - min(forest_share, 1.0)))
    ft = _smooth(rng, (n, n), 12.0)  # large stands of one leaf type
    needle = forest & (ft >= np.quantile(ft[forest], 1 - fr[ENF - 1] / (fr[ENF - 1] + fr[DBF - 1]))) if forest.any() else forest
    lc[forest & needle] = ENF
    lc[forest & ~needle] = DBF

    # Urban blobs (villages) in the remaining open land.
    open_ = lc == 0
    uf = _smooth(rng, (n, n), 4.0) + 1.2 * _smooth(rng, (n, n), 15.0)
    if open_.any():
        share = min(fr[URB - 1] / max(open_.mean(), 1e-6), 1.0)
        lc[open_ & (uf >= np.quantile(uf[open_], 1 - share))] = URB

    # Field parcels: jittered grid seeds, anisotropic distance (elongated fields), one class per parcel.
    step = cfg.parcel_size_px
    g = np.arange(step / 2, n + step, step) - step / 2
    sy, sx = np.meshgrid(g, g, indexing="ij")
    seeds = np.stack([sy.ravel(), sx.ravel()], 1) + rng.uniform(-0.4, 0.4, (sy.size, 2)) * step
    stretch = rng.uniform(1.4, 2.2)
    tree = cKDTree(seeds * [stretch, 1.0])
    pid = tree.query(np.stack([yy.ravel() * stretch, xx.ravel()], 1))[1].reshape(n, n).astype(np.int32)
    # Classes by largest remaining area deficit, parcels in random order: the scene's mix follows
    # the target fractions closely even with few parcels, and neighbours stay independent.
    open_ = lc == 0
    area = np.bincount(pid[open_], minlength=len(seeds)).astype(np.float64)
    cls3 = np.array([GRA, CRO, BAR])
    p_open = fr[cls3 - 1]
    deficit = p_open / p_open.sum() * area.sum()
    parcel_class = np.zeros(len(seeds), np.uint8)
    for k in rng.permutation(len(seeds)):
        j = int(np.argmax(deficit + rng.uniform(0, 1e-3, 3)))
        parcel_class[k] = cls3[j]
        deficit[j] -= area[k]
    lc[open_] = parcel_class[pid[open_]]

    if site_class is not None:  # homogeneous site stand/field centred on the tower pixel
        c = n // 2
        ang = rng.uniform(0, np.pi)
        u = (yy - c) * np.cos(ang) + (xx - c) * np.sin(ang)
        v = -(yy - c) * np.sin(ang) + (xx - c) * np.cos(ang)
        if site_class in (CRO, GRA):
            site = (np.abs(u) <= max(3.0, 0.30 * n)) & (np.abs(v) <= max(3.0, 0.20 * n))
        else:
            r = np.hypot(u, v) / (1 + 0.15 * _smooth(rng, (n, n), 3.0))
            site = r <= max(3.0, 0.32 * n)
        lc[site] = site_class
        pid[site] = len(seeds)

    # Parcel ids: Voronoi cells for fields/meadows/bare, connected patches elsewhere (unique per unit).
    out = np.where(np.isin(lc, [GRA, CRO, BAR]), pid, -1).astype(np.int32)
    nxt = int(pid.max()) + 1
    for cls in (ENF, DBF, URB, WAT):
        lab, k = ndimage.label(lc == cls)
        m = lab > 0
        out[m] = lab[m] + nxt - 1
        nxt += k
    # Renumber 0..K-1 in raster order for stable, compact ids.
    _, inv = np.unique(out, return_inverse=True)
    return lc, inv.reshape(n, n).astype(np.int32)


