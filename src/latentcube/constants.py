"""Band orders, variable names and physical conventions, in one place with their provenance.

Everything downstream (normalisation statistics, model input channels, checkpoints) indexes bands by
position. If an order here changes, every stored model silently reads the wrong bands, so checkpoints
record the order and loaders compare it (see ``check_band_order``).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Canonical Sentinel-2 L2A bands: the ten 10 m and 20 m bands, in wavelength order (ESA band
#: numbering; B8A sits after B08 because its centre, 865 nm, is above B08's 842 nm). The paper lists
#: these "ten bands at 10 and 20 m"; B01 (60 m aerosol) is deliberately excluded.
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

#: Central wavelengths in nm (Sentinel-2A spectral response, ESA S2 MSI Level-1C product spec).
S2_WAVELENGTH_NM: dict[str, float] = {
    "B02": 492.4, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B11": 1613.7, "B12": 2202.4,
}

#: Sentinel-1 polarisations, co-pol first (Planetary Computer ``sentinel-1-rtc`` asset names, lower case there).
S1_BANDS: tuple[str, ...] = ("VV", "VH")

#: Dimension names of the cube data model (docs/data-model.md).
S2_DIMS: tuple[str, ...] = ("time", "band", "y", "x")
S1_DIMS: tuple[str, ...] = ("time_s1", "band_s1", "y", "x")
EMBEDDING_DIMS: tuple[str, ...] = ("time", "feature", "y", "x")

#: Sentinel-2 scene classification (SCL) classes, ESA L2A ATBD.
SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_or_defective", 2: "dark_area_pixels", 3: "cloud_shadows",
    4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified", 8: "cloud_medium_probability",
    9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow",
}
#: SCL classes masked by default: shadow, medium/high cloud, cirrus (issue 4; snow optional).
SCL_MASKED_DEFAULT: tuple[int, ...] = (3, 8, 9, 10)

#: Sentinel-2 L2A reflectance scaling: reflectance = (DN + offset) / 10000, offset -1000 from
#: processing baseline 04.00 (25 Jan 2022) on, 0 before.
S2_QUANTIFICATION = 10000.0
S2_BOA_OFFSET_PB04 = -1000.0

#: Land-cover classes of the synthetic world and of the paper's Table I mix (ESA CCI-like grouping).
LANDCOVER_CLASSES: dict[int, str] = {
    1: "needleleaf_forest",
    2: "broadleaf_forest",
    3: "grassland",
    4: "cropland",
    5: "urban",
    6: "water",
    7: "bare_soil",
}


#: Pixels per temporal-layer call in ``encode_scene`` (latentcube.nn; defined here so that ``embed`` knows
#: it without importing torch). 128 rather than 256: the fused path's fusion layer holds every window row
#: of a chunk (693 x pixels x 32 at 73 dates) several times; 128 peaks ~130 MB lower at the same speed
#: (benchmarks/RESULTS.md).
DEFAULT_PIXEL_CHUNK = 128


def check_band_order(actual: Sequence[str], expected: Sequence[str], *, what: str = "bands") -> None:
    """Raise ``ValueError`` naming the difference when ``actual`` is not exactly ``expected``.

    Band orders are compared at every boundary (cube -> model, checkpoint -> cube) because a permuted
    order gives plausible-looking but wrong results rather than an error.
    """
    actual, expected = [str(b) for b in actual], [str(b) for b in expected]
    if actual == expected:
        return
    missing = [b for b in expected if b not in actual]
    extra = [b for b in actual if b not in expected]
    if missing or extra:
        raise ValueError(
            f"{what} mismatch: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            f"expected exactly {expected}"
        )
    raise ValueError(f"{what} are in the wrong order: got {actual}, expected {expected}")


def missing_bands_fix(actual: Sequence[str], expected: Sequence[str]) -> str | None:
    """The fix when a cube of bands ``actual`` lacks some of a model's bands ``expected``; None when it has them all.

    One wording for train/embed's band error (:func:`model_band_selection`) and ``latentcube info``: the
    missing bands, and the config line that trains a model on the cube's own bands instead.
    """
    actual, expected = [str(b) for b in actual], [str(b) for b in expected]
    missing = [b for b in expected if b not in actual]
    if not missing:
        return None
    return (f"the cube lacks {missing}: fetch or import them into the cube, or train a model on the cube's "
            f"bands (model: {{n_bands: {len(actual)}, band_names: {actual}}})")


def model_band_selection(actual: Sequence[str], expected: Sequence[str], *, what: str,
                         dim: str = "band") -> tuple[str, ...] | None:
    """How a cube's bands ``actual`` feed a model of bands ``expected`` (cube -> model, in embed and train).

    None when they are the same; ``expected`` when the cube holds all of them in that order among others
    (the model's are then read by name: exact, and no reduced copy of the cube is needed). Otherwise raises
    ``ValueError`` naming the difference and the fix: the missing bands (selecting would fail), or a selection.
    """
    actual, expected = [str(b) for b in actual], [str(b) for b in expected]
    try:
        check_band_order(actual, expected, what=what)
    except ValueError as err:
        if [b for b in actual if b in expected] == expected:
            return tuple(expected)
        fix = missing_bands_fix(actual, expected) or (
            f"ds = ds.sel({dim}={expected}) and save the cube (extra bands dropped, order the model's)")
        raise ValueError(f"{err}. Fix: {fix}.") from None
    return None
