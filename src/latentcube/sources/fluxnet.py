"""Read FLUXNET-style eddy-covariance files into a daily GPP table, and the paper's quality filters.

Formats (auto-detected from the timestamp columns):

* FLUXNET2015 / ONEFlux FULLSET sub-daily files: ``TIMESTAMP_START``/``TIMESTAMP_END`` as YYYYMMDDHHMM,
  half-hourly (HH, 48 records a day) or hourly (HR, 24 a day). GPP in µmol CO2 m⁻² s⁻¹.
* FLUXNET2015 daily files (DD): ``TIMESTAMP`` as YYYYMMDD; GPP already in g C m⁻² d⁻¹ and
  ``NEE_VUT_REF_QC`` already the daily fraction (0-1) of measured or good-quality gap-filled records.

Missing values are −9999 in every FLUXNET file and become NaN.

Sub-daily -> daily (what ONEFlux does for the DD files):

* ``gpp`` = mean of the day's valid GPP records (µmol CO2 m⁻² s⁻¹) × :data:`UMOL_CO2_S_TO_G_C_DAY`.
  Derivation: 1 µmol CO2 m⁻² s⁻¹ carries 1 µmol C = 1e-6 mol × 12 g mol⁻¹ = 12e-6 g C per m² per second;
  × 86400 s d⁻¹ = 1.0368 g C m⁻² d⁻¹ (the factor the project specifies). ONEFlux's ``CO2TOC`` uses the
  standard atomic weight 12.0107 (1.03772448, 0.09 % higher): pass ``gpp_factor=ONEFLUX_CO2TOC`` to match
  the DD files of FLUXNET2015 to the last digit.
* ``nee_qc_fraction`` = (records whose NEE QC flag is 0 = measured or 1 = good-quality gap fill) /
  (records in a complete day: 48 for HH, 24 for HR). Missing records therefore count as not good.
* ``n_halfhours`` = sub-daily records present that day (48 on complete HH days; for HR files the number
  of hourly records). DD files carry no such count: NaN.

:func:`read_fluxnet` returns every calendar day between the first and the last record and filters
nothing; the paper's selection is the explicit :func:`filter_fluxnet` / :func:`site_passes` step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from latentcube.errors import LatentcubeError

__all__ = [
    "COLUMN_PRESETS",
    "FluxnetError",
    "ONEFLUX_CO2TOC",
    "UMOL_CO2_S_TO_G_C_DAY",
    "filter_fluxnet",
    "passes_quality",
    "read_fluxnet",
    "site_pass_fraction",
    "site_passes",
    "write_fluxnet_dd",
]

#: µmol CO2 m⁻² s⁻¹ -> g C m⁻² d⁻¹: 12 g/mol × 1e-6 mol/µmol × 86400 s/d = 1.0368 (issue 4's definition).
UMOL_CO2_S_TO_G_C_DAY = 12.0e-6 * 86400.0
#: ONEFlux's CO2TOC (12.0107 g/mol, the standard atomic weight of C), used for the FLUXNET2015 DD files.
ONEFLUX_CO2TOC = 12.0107e-6 * 86400.0

#: FLUXNET missing-value code.
MISSING = -9999

#: Column conventions: our name -> column in the file. ``gpp`` and ``nee_qc`` are required, the
#: others are passed through when present (daily means for sub-daily files).
#: ``fluxnet2015``: FLUXNET2015 / ONEFlux FULLSET; GPP from night-time partitioning, as in the paper
#: (§IV-C: GPP_NT_VUT_REF, QC from NEE_VUT_REF_QC). ``eth``: ETH Zurich / diive-style names
#: (daytime-partitioned CUT GPP, ``QCF_NEE`` flags 0 = best, 1 = ok, 2 = rejected).
#: ``reddyproc``: REddyProc output (``GPP_f``, ``NEE_f_fqc`` 0 = measured, 1-3 = gap-fill quality).
COLUMN_PRESETS: dict[str, dict[str, str]] = {
    "fluxnet2015": {"gpp": "GPP_NT_VUT_REF", "nee_qc": "NEE_VUT_REF_QC", "ta": "TA_F", "sw_in": "SW_IN_F"},
    "eth": {"gpp": "GPP_DT_CUT_REF", "nee_qc": "QCF_NEE", "ta": "TA_T1_2_1", "sw_in": "SW_IN_T1_2_1"},
    "reddyproc": {"gpp": "GPP_f", "nee_qc": "NEE_f_fqc", "ta": "Tair", "sw_in": "Rg"},
}

#: Sub-daily QC flags counted as good: 0 measured, 1 good-quality gap fill (FLUXNET2015 data variables
#: page: "NEE_VUT_REF_QC ... fraction between 0-1, indicating percentage of measured and good quality
#: gapfill data" in DD files).
GOOD_QC_FLAGS: tuple[int, ...] = (0, 1)


class FluxnetError(LatentcubeError, ValueError):
    """A FLUXNET file cannot be read as asked; the message names the problem and the fix."""


def _columns(columns: str | Mapping[str, str] | None) -> dict[str, str]:
    base = dict(COLUMN_PRESETS["fluxnet2015"])
    if columns is None:
        return base
    if isinstance(columns, str):
        if columns not in COLUMN_PRESETS:
            raise FluxnetError(f"unknown column preset {columns!r}. Fix: use one of {sorted(COLUMN_PRESETS)} or a mapping.")
        return dict(COLUMN_PRESETS[columns])
    unknown = set(columns) - {"gpp", "nee_qc", "ta", "sw_in"}
    if unknown:
        raise FluxnetError(f"unknown keys {sorted(unknown)} in columns. Fix: use 'gpp', 'nee_qc', 'ta', 'sw_in'.")
    base.update(columns)
    return base


def _parse_stamp(values: pd.Series, fmt: str, what: str, path: Path) -> pd.DatetimeIndex:
    text = values.astype(str).str.strip().str.replace(r"\.0+$", "", regex=True)
    try:
        return pd.DatetimeIndex(pd.to_datetime(text, format=fmt))
    except (ValueError, TypeError) as err:
        raise FluxnetError(
            f"{path}: unknown timestamp format in {what} (first values {list(text[:3])}; expected {fmt}). "
            "Fix: FLUXNET files use YYYYMMDDHHMM (TIMESTAMP_START) or YYYYMMDD (TIMESTAMP, daily files)."
        ) from err


def _detect(df: pd.DataFrame, resolution: str, path: Path) -> tuple[str, pd.DatetimeIndex]:
    """-> (``"subdaily"`` or ``"daily"``, record start times)."""
    if "TIMESTAMP_START" in df.columns:
        kind, stamps = "subdaily", _parse_stamp(df["TIMESTAMP_START"], "%Y%m%d%H%M", "TIMESTAMP_START", path)
    elif "TIMESTAMP" in df.columns:
        width = df["TIMESTAMP"].astype(str).str.strip().str.replace(r"\.0+$", "", regex=True).str.len()
        if (width == 8).all():
            kind, stamps = "daily", _parse_stamp(df["TIMESTAMP"], "%Y%m%d", "TIMESTAMP", path)
        elif (width == 12).all():
            kind, stamps = "subdaily", _parse_stamp(df["TIMESTAMP"], "%Y%m%d%H%M", "TIMESTAMP", path)
        else:
            raise FluxnetError(
                f"{path}: unknown timestamp format in TIMESTAMP (lengths {sorted(set(width))}; first "
                f"{list(df['TIMESTAMP'][:3])}). Fix: use DD (YYYYMMDD) or HH (YYYYMMDDHHMM) files; weekly, "
                "monthly and yearly FLUXNET files are not supported."
            )
    elif "TIMESTAMP_END" in df.columns:
        end = _parse_stamp(df["TIMESTAMP_END"], "%Y%m%d%H%M", "TIMESTAMP_END", path)
        step = pd.Series(end).diff().mode()
        step = step.iloc[0] if len(step) else pd.Timedelta(minutes=30)
        kind, stamps = "subdaily", end - step
    else:
        raise FluxnetError(
            f"{path}: unknown timestamp format: no TIMESTAMP_START, TIMESTAMP_END or TIMESTAMP column "
            f"(columns start {list(df.columns[:8])}). Fix: FLUXNET files need one of these."
        )
    if resolution not in ("auto", "HH", "HR", "DD"):
        raise FluxnetError(f"resolution={resolution!r}. Fix: use 'auto', 'HH', 'HR' or 'DD'.")
    if resolution == "DD" and kind != "daily" or resolution in ("HH", "HR") and kind != "subdaily":
        raise FluxnetError(f"{path}: resolution={resolution!r} but the timestamps are {kind}. Fix: resolution='auto'.")
    return kind, stamps


def read_fluxnet(
    path: str | Path,
    *,
    columns: str | Mapping[str, str] | None = None,
    resolution: Literal["auto", "HH", "HR", "DD"] = "auto",
    good_qc: Sequence[int] = GOOD_QC_FLAGS,
    gpp_factor: float = UMOL_CO2_S_TO_G_C_DAY,
) -> pd.DataFrame:
    """Read a FLUXNET file (HH, HR or DD) into one row per calendar day.

    Args:
        path: CSV file (``FLX_<site>_FLUXNET2015_FULLSET_{HH,DD}_*.csv`` or similar).
        columns: a preset name from :data:`COLUMN_PRESETS` or a mapping overriding the FLUXNET2015 names,
            e.g. ``{"gpp": "GPP_DT_VUT_REF"}``.
        gpp_factor: sub-daily µmol CO2 m⁻² s⁻¹ -> g C m⁻² d⁻¹ (default 1.0368; ``ONEFLUX_CO2TOC`` = 1.03772448).
        resolution: ``"auto"`` (from the timestamp columns) or the expected ``"HH"``/``"HR"``/``"DD"``.
        good_qc: sub-daily QC flags counted as good for ``nee_qc_fraction``.

    Returns:
        DataFrame indexed by ``date`` (daily DatetimeIndex, every day from first to last) with
        ``gpp`` (g C m⁻² d⁻¹), ``nee_qc_fraction`` (0-1), ``n_halfhours`` (records present; NaN for DD),
        and ``ta`` (°C) / ``sw_in`` (W m⁻²) daily means when the file has them. Nothing is filtered.
    """
    path = Path(path)
    if not path.exists():
        raise FluxnetError(f"no such file: {path}. Fix: check the path (FLUXNET CSV files).")
    cols = _columns(columns)
    stamp_cols = ("TIMESTAMP", "TIMESTAMP_START", "TIMESTAMP_END")
    try:
        df = pd.read_csv(path, dtype={c: str for c in stamp_cols}, na_values=[str(MISSING), f"{MISSING}.0"])
    except Exception as err:
        raise FluxnetError(f"cannot read {path} as CSV: {err}") from err
    if cols["gpp"] not in df.columns:
        gpp_like = [c for c in df.columns if "GPP" in c.upper()]
        raise FluxnetError(
            f"{path}: no GPP column {cols['gpp']!r}. GPP-like columns found: {gpp_like or 'none'}; all "
            f"{len(df.columns)} columns: {list(df.columns[:40])}{' ...' if len(df.columns) > 40 else ''}. "
            "Fix: pass columns={'gpp': '<column>'} or a preset (columns='eth')."
        )
    if cols["nee_qc"] not in df.columns:
        qc_like = [c for c in df.columns if "QC" in c.upper() and "NEE" in c.upper()]
        raise FluxnetError(
            f"{path}: no NEE QC column {cols['nee_qc']!r} (NEE QC-like columns: {qc_like or 'none'}). "
            "Fix: pass columns={'nee_qc': '<column>'}."
        )
    kind, stamps = _detect(df, resolution, path)
    wanted = {k: c for k, c in cols.items() if c in df.columns}
    data = pd.DataFrame(
        {k: pd.to_numeric(df[c], errors="coerce").to_numpy() for k, c in wanted.items()}, index=stamps
    ).replace(MISSING, np.nan)  # -9999 written as e.g. -9999.000 also means missing
    if kind == "daily":
        out = data.rename(columns={"nee_qc": "nee_qc_fraction"})
        out["n_halfhours"] = np.nan
        out.index = out.index.normalize()
        res_label = "DD"
    else:
        diffs = pd.Series(stamps).diff().dropna()
        step = diffs.mode().iloc[0] if len(diffs) else pd.Timedelta(minutes=30)
        per_day = int(round(pd.Timedelta(days=1) / step))
        res_label = {48: "HH", 24: "HR"}.get(per_day, f"{per_day} records/day")
        if resolution in ("HH", "HR") and res_label != resolution:
            raise FluxnetError(
                f"{path}: resolution={resolution!r} but the records are {step} apart ({res_label}). "
                "Fix: resolution='auto'."
            )
        day = stamps.normalize()
        grouped = data.groupby(day)
        out = pd.DataFrame(index=grouped.size().index)
        out["gpp"] = grouped["gpp"].mean() * gpp_factor
        good = data["nee_qc"].isin(list(good_qc))
        out["nee_qc_fraction"] = good.groupby(day).sum() / per_day
        out["n_halfhours"] = grouped.size().astype("float64")
        for k in ("ta", "sw_in"):
            if k in data:
                out[k] = grouped[k].mean()
    if out.index.has_duplicates:
        dups = [str(d.date()) for d in out.index[out.index.duplicated()][:3]]
        raise FluxnetError(f"{path}: duplicate days {dups}. Fix: remove the repeated rows.")
    out = out.sort_index()
    full = pd.date_range(out.index.min(), out.index.max(), freq="D", name="date")
    out = out.reindex(full)
    if kind == "subdaily":
        out["n_halfhours"] = out["n_halfhours"].fillna(0.0)
    order = ["gpp", "nee_qc_fraction", "n_halfhours"] + [k for k in ("ta", "sw_in") if k in out]
    out = out[order]
    out.attrs.update({"source": str(path), "resolution": res_label, "gpp_units": "g C m-2 d-1",
                      "gpp_column": cols["gpp"], "qc_column": cols["nee_qc"]})
    return out


def passes_quality(df: pd.DataFrame, *, min_qc_fraction: float = 0.7, min_gpp: float = 0.0) -> pd.Series:
    """Boolean per day: GPP present, ``gpp >= min_gpp`` and ``nee_qc_fraction >= min_qc_fraction``
    (paper §IV-C: days with < 70 % high-quality NEE and negative GPP are excluded)."""
    return df["gpp"].notna() & (df["gpp"] >= min_gpp) & (df["nee_qc_fraction"] >= min_qc_fraction)


def filter_fluxnet(
    df: pd.DataFrame, *, min_qc_fraction: float = 0.7, min_gpp: float = 0.0, drop: bool = True
) -> pd.DataFrame:
    """Apply the paper's day filter. ``drop=True`` returns only passing days; ``drop=False`` keeps the
    continuous daily index and sets ``gpp`` to NaN on failing days (what sliding windows need)."""
    ok = passes_quality(df, min_qc_fraction=min_qc_fraction, min_gpp=min_gpp)
    if drop:
        return df.loc[ok].copy()
    out = df.copy()
    out.loc[~ok, "gpp"] = np.nan
    return out


def site_pass_fraction(df: pd.DataFrame, *, min_qc_fraction: float = 0.7, min_gpp: float = 0.0) -> float:
    """Fraction of the days with a GPP value that pass :func:`passes_quality` (0 when none has one)."""
    has = df["gpp"].notna()
    n = int(has.sum())
    if n == 0:
        return 0.0
    return float(passes_quality(df, min_qc_fraction=min_qc_fraction, min_gpp=min_gpp)[has].sum() / n)


def site_passes(
    df: pd.DataFrame, *, min_fraction: float = 0.6, min_qc_fraction: float = 0.7, min_gpp: float = 0.0
) -> bool:
    """The paper's site selection: at least ``min_fraction`` of the site's GPP days pass the day filter
    (paper: "more than 60 %"; a site at exactly 60 % is kept here)."""
    return site_pass_fraction(df, min_qc_fraction=min_qc_fraction, min_gpp=min_gpp) >= min_fraction


def write_fluxnet_dd(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a daily table (as returned by :func:`read_fluxnet`) as a FLUXNET2015 DD CSV.

    Columns TIMESTAMP (YYYYMMDD), GPP_NT_VUT_REF, NEE_VUT_REF_QC, and TA_F / SW_IN_F when present;
    NaN is written as −9999. ``read_fluxnet`` reads it back to the same values.
    """
    path = Path(path)
    names = {"gpp": "GPP_NT_VUT_REF", "nee_qc_fraction": "NEE_VUT_REF_QC", "ta": "TA_F", "sw_in": "SW_IN_F"}
    out = pd.DataFrame({"TIMESTAMP": pd.DatetimeIndex(df.index).strftime("%Y%m%d")})
    for k, c in names.items():
        if k in df:
            out[c] = df[k].to_numpy(dtype="float64")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.fillna(MISSING).to_csv(path, index=False, float_format="%.10g")
    return path
