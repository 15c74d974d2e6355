"""Import settings: how a file's raw values become physical ones (presets, band names, the CLI's syntax)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from latentcube.constants import S1_BANDS, S2_BANDS
from latentcube.cube import CubeError

PathLike = str | Path
S1Encoding = Literal["linear", "db", "openeo_uint16"]

#: openEO/CDSE Sentinel-1 uint16 encoding (openeo-gfmap ``compress_backscatter_uint16``):
#: DN = 10^((dB + 83) / 20), i.e. dB = 20·log10(DN) − 83; DN 0 and 65535 are nodata.
OPENEO_S1_DB_OFFSET = 83.0
OPENEO_S1_NODATA: tuple[int, ...] = (0, 65535)
#: openEO/CDSE Sentinel-2 uint16 DN: 0 (no acquisition) and 65535 (the uint16 fill of composites) are nodata.
OPENEO_S2_NODATA: tuple[int, ...] = (0, 65535)

_TARGETS = frozenset(S2_BANDS) | frozenset(S1_BANDS) | {"SCL"}


@dataclass(frozen=True)
class ImportSettings:
    """How raw values become physical values. ``None`` fields fall back to the file's CF attributes.

    Physical value = raw × scale + offset (CF convention), after nodata values were set to NaN.
    For S2 L2A from processing baseline 04.00 on with the DN offset still applied, use
    ``s2_offset=-0.1`` (reflectance = (DN − 1000) / 10000).
    """

    s2_scale: float | None = None
    s2_offset: float | None = None
    s2_nodata: tuple[float, ...] | None = None
    s1_encoding: S1Encoding = "linear"
    s1_scale: float | None = None
    s1_offset: float | None = None
    s1_nodata: tuple[float, ...] | None = None
    time_dim: str | None = None
    band_map: Mapping[str, str] = field(default_factory=dict)


#: Presets for known export layouts (provenance: /work/shared/data/README.md and the exporters' code).
PRESETS: dict[str, ImportSettings] = {
    # openEO (CDSE) NetCDF exports: dimension 't', variables 'S2-L2A-B04', 'S2-L2A-SCL', 'S1-SIGMA0-VV';
    # S2 uint16 DN × 1e-4 with 0 and 65535 = nodata (monthly composites fill empty months with 65535);
    # S1 uint16 dB = 20·log10(DN) − 83, DN 0/65535 nodata. The file's _FillValue/nodata count too.
    "openeo": ImportSettings(
        s2_scale=1e-4, s2_offset=0.0, s2_nodata=OPENEO_S2_NODATA, s1_encoding="openeo_uint16", s1_nodata=OPENEO_S1_NODATA
    ),
    # WorldCereal / Google Earth Engine extractions: dimension 'timestamp', B02.. uint16 × 1e-4, 0 nodata;
    # S1 GRD 'VV'/'VH' int32 × 1e-4 = sigma0 in dB, 0 nodata.
    "worldcereal": ImportSettings(
        s2_scale=1e-4, s2_offset=0.0, s2_nodata=(0,), s1_encoding="db", s1_scale=1e-4, s1_offset=0.0,
        s1_nodata=(0,), time_dim="timestamp",
    ),
}


# ---------------------------------------------------------------------------------------- names


def canonical_band_name(name: str) -> str | None:
    """The canonical name (S2 band, ``SCL``, ``VV``, ``VH``) a source variable name denotes, else None.

    The last token after ``-``/``_``/``:``/``.``/space decides: ``S2-L2A-B04`` -> ``B04``, ``b4`` -> ``B04``,
    ``B8a`` -> ``B8A``, ``S1-SIGMA0-VV`` -> ``VV``, ``S2-L2A-SCL`` -> ``SCL``. ``B01`` maps to ``B01`` (not
    a model band; the importer drops it).
    """
    token = re.split(r"[-_:. ]", str(name).strip())[-1].upper()
    if token in ("VV", "VH", "SCL"):
        return token
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", token)
    if m:
        return f"B{int(m.group(1)):02d}" if not m.group(2) else f"B{int(m.group(1))}A"
    return None


def decode_openeo_s1(dn: np.ndarray) -> np.ndarray:
    """openEO uint16 backscatter DN -> dB (20·log10(DN) − 83), NaN for DN 0 and 65535."""
    dn = np.asarray(dn, dtype="float64")
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(dn) - OPENEO_S1_DB_OFFSET
    db[np.isin(dn, OPENEO_S1_NODATA)] = np.nan
    return db


# ------------------------------------------------------------------------------------ CLI helpers


def parse_band_map(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["red=B04", "nir=B08"]`` (the CLI's repeated ``--band-map``) -> ``{"red": "B04", "nir": "B08"}``."""
    if not items:
        return None
    out = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise CubeError(f"--band-map {item!r}: expected SOURCE=BAND, e.g. red=B04 or S1-SIGMA0-VV=VV.")
        out[src.strip()] = dst.strip()
    return out


def parse_layers(items: Sequence[str] | None) -> dict[str, str | tuple[str, str]] | None:
    """``["landcover=labels.nc:LC", "mask=mask.tif"]`` (repeated ``--layer NAME=PATH[:VARIABLE]``) ->
    ``{"landcover": ("labels.nc", "LC"), "mask": "mask.tif"}``. The text after the last ``:`` is a
    variable name only when it contains no path separator or dot (so ``C:\\x.tif`` stays a path)."""
    if not items:
        return None
    out: dict[str, str | tuple[str, str]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise CubeError(f"--layer {item!r}: expected NAME=PATH or NAME=PATH:VARIABLE, e.g. landcover=labels.nc:LC.")
        path, colon, var = spec.rpartition(":")
        if colon and path and var and not any(ch in var for ch in "/\\.") and len(path) > 1:
            out[name.strip()] = (path, var)
        else:
            out[name.strip()] = spec
    return out
