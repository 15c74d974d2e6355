"""Read FLUXNET-style eddy-covariance files into a daily GPP table, and the paper's quality filters.

Formats (auto-detected from the timestamp columns):

* FLUXNET2015 / ONEFlux FULLSET sub-daily files: ``TIMESTAMP_START``/``TIMESTAMP_END`` as YYYYMMDDHHMM,
  half-hourly (HH, 48 records a day) or hourly (HR, 24 a day). GPP in µmol CO2 m⁻² s⁻¹.
* FLUXNET2015 daily files (DD): ``TIMESTAMP`` as YYYYMMDD; GPP already in g C m⁻² d⁻¹ and
  ``NEE_VUT_REF_QC`` already the daily fraction (0-1) of measured or good-quality gap-filled records.

* Exports with ``TIMESTAMP_MIDDLE`` (ETH / diive): record start and end are half a record step either side.
* CSV or Parquet (by the ``.parquet``/``.pq`` suffix or the file's magic bytes); timestamps as text
  (YYYYMMDDHHMM) or as datetime values.

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
* meteorological drivers ``ta`` (°C), ``sw_in`` (W m⁻²), ``vpd`` (hPa): daily means when mapped and present.

:func:`read_fluxnet` returns every calendar day between the first and the last record and filters
nothing; the paper's selection is the explicit :func:`filter_fluxnet` / :func:`site_passes` step.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from latentcube.errors import LatentcubeError

__all__ = [
    "COLUMN_PRESETS",
    "METEO_COLUMNS",
    "FluxnetError",
    "FluxnetWarning",
    "ONEFLUX_CO2TOC",
    "UMOL_CO2_S_TO_G_C_DAY",
    "filter_fluxnet",
    "parse_columns",
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

#: Meteorological drivers read when their columns are present: air temperature (°C), incoming shortwave
#: radiation (W m⁻²), vapour pressure deficit (hPa).
METEO_COLUMNS: tuple[str, ...] = ("ta", "sw_in", "vpd")

#: Column conventions: our name -> column in the file. ``gpp`` and ``nee_qc`` are required, the
#: drivers (:data:`METEO_COLUMNS`) are passed through when present (daily means for sub-daily files).
#: ``fluxnet2015``: FLUXNET2015 / ONEFlux FULLSET; GPP from night-time partitioning, as in the paper
#: (§IV-C: GPP_NT_VUT_REF, QC from NEE_VUT_REF_QC). ``eth``: ETH Zurich / diive-style names
#: (daytime-partitioned CUT GPP, ``QCF_NEE`` flags 0 = best, 1 = ok, 2 = rejected; sensor heights differ
#: between sites, e.g. ``TA_T1_47_1``: map them with ``eth,ta=<column>``).
#: ``reddyproc``: REddyProc output (``GPP_f``, ``NEE_f_fqc`` 0 = measured, 1-3 = gap-fill quality).
COLUMN_PRESETS: dict[str, dict[str, str]] = {
    "fluxnet2015": {"gpp": "GPP_NT_VUT_REF", "nee_qc": "NEE_VUT_REF_QC", "ta": "TA_F", "sw_in": "SW_IN_F",
                    "vpd": "VPD_F"},
    "eth": {"gpp": "GPP_DT_CUT_REF", "nee_qc": "QCF_NEE", "ta": "TA_T1_2_1", "sw_in": "SW_IN_T1_2_1",
            "vpd": "VPD_T1_2_1"},
    "reddyproc": {"gpp": "GPP_f", "nee_qc": "NEE_f_fqc", "ta": "Tair", "sw_in": "Rg", "vpd": "VPD"},
}
#: Unit factors to the units above, per preset and column (ETH/diive files give VPD in kPa).
_PRESET_FACTORS: dict[str, dict[str, float]] = {"eth": {"vpd": 10.0}}
#: Patterns (case-insensitive) of candidate columns for a key whose mapped column is absent.
_CANDIDATE_HINTS: dict[str, str] = {"gpp": r"GPP", "nee_qc": r"NEE.*QC|QC.*NEE", "ta": r"^(TA|TAIR|T_AIR|AIR_?TEMP)(_|$)",
                                    "sw_in": r"^(SW_IN|SWIN|RG|GLOBAL_?RAD)(_|$)", "vpd": r"^VPD(_|$)"}
#: A file whose GPP covers less than this share of the days between its first and last record is warned about.
MIN_DAY_SHARE = 0.5

#: Sub-daily QC flags counted as good: 0 measured, 1 good-quality gap fill (FLUXNET2015 data variables
#: page: "NEE_VUT_REF_QC ... fraction between 0-1, indicating percentage of measured and good quality
#: gapfill data" in DD files).
GOOD_QC_FLAGS: tuple[int, ...] = (0, 1)


class FluxnetError(LatentcubeError, ValueError):
    """A FLUXNET file cannot be read as asked; the message names the problem and the fix."""


class FluxnetWarning(UserWarning):
    """A FLUXNET file was read, but something in it deserves a look (absent driver columns, few days)."""


_KEYS = ("gpp", "nee_qc", *METEO_COLUMNS)


def parse_columns(columns: str | Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, float]]:
    """(our name -> file column, our name -> unit factor) of a preset name, a spec such as
    ``"eth,ta=TA_T1_47_1"`` (one preset and/or ``key=column`` overrides, comma-separated; the CLI's
    ``--flux-columns``) or a mapping of overrides of the FLUXNET2015 names."""
    preset, overrides = "fluxnet2015", {}
    if isinstance(columns, str):
        for item in (s.strip() for s in columns.split(",")):
            if not item:
                continue
            if "=" in item:
                key, _, col = item.partition("=")
                overrides[key.strip()] = col.strip()
            elif item in COLUMN_PRESETS:
                preset = item
            else:
                raise FluxnetError(f"unknown column preset {item!r}. Fix: use one of {sorted(COLUMN_PRESETS)} "
                                   "and/or key=column items, e.g. 'eth,ta=TA_T1_47_1' (CLI: --flux-columns).")
    elif columns is not None:
        overrides = dict(columns)
    unknown = sorted(set(overrides) - set(_KEYS))
    if unknown:
        raise FluxnetError(f"unknown keys {unknown} in columns. Fix: use {list(_KEYS)}.")
    cols = {**COLUMN_PRESETS[preset], **overrides}
    factors = {k: f for k, f in _PRESET_FACTORS.get(preset, {}).items() if k not in overrides}
    return cols, factors


def _candidates(key: str, columns: Sequence[str]) -> list[str]:
    return [str(c) for c in columns if re.search(_CANDIDATE_HINTS[key], str(c), flags=re.IGNORECASE)][:12]


def _read_table(path: Path) -> pd.DataFrame:
    """The file as a DataFrame of its columns (timestamps as text or datetimes): CSV or Parquet."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if path.suffix.lower() in (".parquet", ".pq") or magic == b"PAR1":
        try:
            df = pd.read_parquet(path)
        except ImportError as err:
            raise FluxnetError(f"reading {path} (Parquet) needs pyarrow, which is not installed. Fix: pip install "
                               "pyarrow (or latentcube[vector]), or export the file as CSV.") from err
        except Exception as err:
            raise FluxnetError(f"cannot read {path} as Parquet: {err}. Fix: check that the file is complete "
                               "(re-export it), or export it as CSV.") from err
        if df.index.name or isinstance(df.index, pd.DatetimeIndex):
            df = df.reset_index()  # diive keeps TIMESTAMP_MIDDLE as the index
        return df
    stamp_cols = ("TIMESTAMP", "TIMESTAMP_START", "TIMESTAMP_END", "TIMESTAMP_MIDDLE")
    try:
        df = pd.read_csv(path, dtype={c: str for c in stamp_cols}, na_values=[str(MISSING), f"{MISSING}.0"])
    except pd.errors.EmptyDataError as err:
        raise FluxnetError(f"{path} is empty. Fix: pass the FLUXNET file itself (a header line and one row per "
                           "record).") from err
    except Exception as err:
        raise FluxnetError(f"cannot read {path} as CSV: {err}. Fix: pass a FLUXNET CSV or Parquet file "
                           "(FLX_<SITE>_*.csv).") from err
    if df.shape[1] == 1 and any(s in str(df.columns[0]) for s in (";", "\t")):
        sep = "semicolons" if ";" in str(df.columns[0]) else "tabs"
        raise FluxnetError(
            f"{path} is separated by {sep}, not commas (one column {str(df.columns[0])[:60]!r}...). Fix: FLUXNET "
            "files are comma-separated; re-save it with commas, e.g. pd.read_csv(path, sep=';').to_csv(new_path, "
            "index=False) (mind decimal commas: decimal=',')."
        )
    return df


def _parse_stamp(values: pd.Series, fmt: str, what: str, path: Path) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.DatetimeIndex(values).tz_localize(None) if getattr(values.dt, "tz", None) else pd.DatetimeIndex(values)
    text = values.astype(str).str.strip().str.replace(r"\.0+$", "", regex=True)
    try:
        return pd.DatetimeIndex(pd.to_datetime(text, format=fmt))
    except (ValueError, TypeError) as err:
        raise FluxnetError(
            f"{path}: unknown timestamp format in {what} (first values {list(text[:3])}; expected {fmt}). "
            "Fix: FLUXNET files use YYYYMMDDHHMM (TIMESTAMP_START) or YYYYMMDD (TIMESTAMP, daily files)."
        ) from err


def _step(stamps: pd.DatetimeIndex) -> pd.Timedelta:
    """The most common spacing of sub-daily records (30 min when there is a single record)."""
    step = pd.Series(stamps).diff().mode()
    return step.iloc[0] if len(step) else pd.Timedelta(minutes=30)


def _detect(df: pd.DataFrame, resolution: str, path: Path) -> tuple[str, pd.DatetimeIndex]:
    """-> (``"subdaily"`` or ``"daily"``, record start times)."""
    if "TIMESTAMP_START" in df.columns:
        kind, stamps = "subdaily", _parse_stamp(df["TIMESTAMP_START"], "%Y%m%d%H%M", "TIMESTAMP_START", path)
    elif "TIMESTAMP" in df.columns and pd.api.types.is_datetime64_any_dtype(df["TIMESTAMP"]):
        stamps = _parse_stamp(df["TIMESTAMP"], "", "TIMESTAMP", path)  # datetimes (Parquet): daily if all at midnight
        daily = (stamps == stamps.normalize()).all() and (len(stamps) < 2 or _step(stamps) >= pd.Timedelta(days=1))
        kind = "daily" if daily else "subdaily"
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
        kind, stamps = "subdaily", end - _step(end)
    elif "TIMESTAMP_MIDDLE" in df.columns:
        compact = df["TIMESTAMP_MIDDLE"].astype(str).str.fullmatch(r"\d{12}").all()
        mid = _parse_stamp(df["TIMESTAMP_MIDDLE"], "%Y%m%d%H%M" if compact else "ISO8601", "TIMESTAMP_MIDDLE", path)
        kind, stamps = "subdaily", mid - _step(mid) / 2  # record start = middle - half a record
    else:
        raise FluxnetError(
            f"{path}: unknown timestamp format: no TIMESTAMP_START, TIMESTAMP_END, TIMESTAMP_MIDDLE or TIMESTAMP "
            f"column (columns start {list(df.columns[:8])}). Fix: FLUXNET files need one of these."
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
    require: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a FLUXNET file (HH, HR or DD; CSV or Parquet) into one row per calendar day.

    Args:
        path: CSV or Parquet file (``FLX_<site>_FLUXNET2015_FULLSET_{HH,DD}_*.csv`` or similar).
        columns: a preset name from :data:`COLUMN_PRESETS`, a spec ``"eth,ta=TA_T1_47_1"`` (preset and/or
            ``key=column`` overrides) or a mapping overriding the FLUXNET2015 names, e.g.
            ``{"gpp": "GPP_DT_VUT_REF"}``.
        gpp_factor: sub-daily µmol CO2 m⁻² s⁻¹ -> g C m⁻² d⁻¹ (default 1.0368; ``ONEFLUX_CO2TOC`` = 1.03772448).
        resolution: ``"auto"`` (from the timestamp columns) or the expected ``"HH"``/``"HR"``/``"DD"``.
        good_qc: sub-daily QC flags counted as good for ``nee_qc_fraction``.
        require: drivers of :data:`METEO_COLUMNS` that must be in the file (an error names the candidates);
            other mapped drivers that are absent give a :class:`FluxnetWarning` naming them.

    Returns:
        DataFrame indexed by ``date`` (daily DatetimeIndex, every day from first to last) with
        ``gpp`` (g C m⁻² d⁻¹), ``nee_qc_fraction`` (0-1), ``n_halfhours`` (records present; NaN for DD),
        and ``ta`` (°C) / ``sw_in`` (W m⁻²) / ``vpd`` (hPa) daily means when the file has them. Nothing is
        filtered. A file with GPP on fewer than half of its days gives a :class:`FluxnetWarning` with the share.
    """
    path = Path(path)
    if not path.exists():
        raise FluxnetError(f"no such file: {path}. Fix: check the path (FLUXNET CSV or Parquet files).")
    cols, factors = parse_columns(columns)
    bad = sorted(set(require) - set(METEO_COLUMNS))
    if bad:
        raise FluxnetError(f"require={bad}: not drivers. Fix: choose from {list(METEO_COLUMNS)}.")
    df = _read_table(path)
    if df.empty:
        raise FluxnetError(f"{path} has a header but no records (columns {list(df.columns[:8])}). Fix: pass the "
                           "complete FLUXNET file; this one holds no days.")
    if cols["gpp"] not in df.columns:
        raise FluxnetError(
            f"{path}: no GPP column {cols['gpp']!r}. GPP-like columns found: {_candidates('gpp', df.columns) or 'none'}; "
            f"all {len(df.columns)} columns: {list(df.columns[:40])}{' ...' if len(df.columns) > 40 else ''}. "
            "Fix: pass columns={'gpp': '<column>'} or a preset (columns='eth'); CLI: --flux-columns gpp=<column> "
            "or --flux-columns eth."
        )
    if cols["nee_qc"] not in df.columns:
        qc_like = [c for c in df.columns if "QC" in str(c).upper() and "NEE" in str(c).upper()]
        raise FluxnetError(
            f"{path}: no NEE QC column {cols['nee_qc']!r} (NEE QC-like columns: {qc_like or 'none'}). "
            "Fix: pass columns={'nee_qc': '<column>'}; CLI: --flux-columns nee_qc=<column>."
        )
    absent = {k: cols[k] for k in METEO_COLUMNS if cols[k] not in df.columns}
    missing_required = {k: c for k, c in absent.items() if k in require}
    # Silent only where nothing can be done: the default names and no candidate column in the file.
    if missing_required or absent and (columns is not None or any(_candidates(k, df.columns) for k in absent)):
        named = missing_required or absent
        hints = "; ".join(f"{k} {c!r} (candidates: {_candidates(k, df.columns) or 'none'})" for k, c in named.items())
        first = next(iter(named))
        fix = ("Fix: map them, e.g. columns={'" + first + "': '<column>'}; CLI: --flux-columns "
               + (columns + "," if isinstance(columns, str) else "") + f"{first}=<column>.")
        if missing_required:
            raise FluxnetError(f"{path}: driver columns not found: {hints}. {fix}")
        warnings.warn(f"{path}: driver columns not found, read without them: {hints}. {fix}", FluxnetWarning,
                      stacklevel=2)
    kind, stamps = _detect(df, resolution, path)
    wanted = {k: c for k, c in cols.items() if c in df.columns}
    data = pd.DataFrame(
        {k: pd.to_numeric(df[c], errors="coerce").to_numpy() for k, c in wanted.items()}, index=stamps
    ).replace(MISSING, np.nan)  # -9999 written as e.g. -9999.000 also means missing
    for k, f in factors.items():
        if k in data:
            data[k] *= f
    meteo = [k for k in METEO_COLUMNS if k in data]
    if kind == "daily":
        out = data.rename(columns={"nee_qc": "nee_qc_fraction"})
        out["n_halfhours"] = np.nan
        out.index = out.index.normalize()
        res_label = "DD"
    else:
        step = _step(stamps)
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
        for k in meteo:
            out[k] = grouped[k].mean()
    if out.index.has_duplicates:
        dups = [str(d.date()) for d in out.index[out.index.duplicated()][:3]]
        raise FluxnetError(f"{path}: duplicate days {dups}. Fix: remove the repeated rows.")
    out = out.sort_index()
    full = pd.date_range(out.index.min(), out.index.max(), freq="D", name="date")
    out = out.reindex(full)
    if kind == "subdaily":
        out["n_halfhours"] = out["n_halfhours"].fillna(0.0)
    out = out[["gpp", "nee_qc_fraction", "n_halfhours", *meteo]]
    share = float(out["gpp"].notna().mean())
    if share < MIN_DAY_SHARE:
        warnings.warn(
            f"{path}: GPP on only {share:.0%} of the {len(out)} days from {full[0].date()} to {full[-1].date()} "
            f"({int(out['gpp'].notna().sum())} days); results rest on those days. Fix: check the export (a "
            "FLUXNET DD file has every day), or use the site's complete HH/DD file.", FluxnetWarning, stacklevel=2)
    out.attrs.update({"source": str(path), "resolution": res_label, "gpp_units": "g C m-2 d-1",
                      "gpp_column": cols["gpp"], "qc_column": cols["nee_qc"], "gpp_day_share": share,
                      "meteo_columns": {k: cols[k] for k in meteo}})
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

    Columns TIMESTAMP (YYYYMMDD), GPP_NT_VUT_REF, NEE_VUT_REF_QC, and TA_F / SW_IN_F / VPD_F when present;
    NaN is written as −9999. ``read_fluxnet`` reads it back to the same values.
    """
    path = Path(path)
    names = {"gpp": "GPP_NT_VUT_REF", "nee_qc_fraction": "NEE_VUT_REF_QC", "ta": "TA_F", "sw_in": "SW_IN_F",
             "vpd": "VPD_F"}
    out = pd.DataFrame({"TIMESTAMP": pd.DatetimeIndex(df.index).strftime("%Y%m%d")})
    for k, c in names.items():
        if k in df:
            out[c] = df[k].to_numpy(dtype="float64")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.fillna(MISSING).to_csv(path, index=False, float_format="%.10g")
    return path
