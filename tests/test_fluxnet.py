"""FLUXNET reader: daily aggregation of the real CH-Cha HH sample checked against a slow loop over the
raw CSV, -9999 handling, the paper's filters, DD round trips and error messages."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from latentcube.sources.fluxnet import (
    ONEFLUX_CO2TOC,
    UMOL_CO2_S_TO_G_C_DAY,
    FluxnetError,
    FluxnetWarning,
    filter_fluxnet,
    passes_quality,
    read_fluxnet,
    site_pass_fraction,
    site_passes,
    write_fluxnet_dd,
)

DATA = SHARED_DATA / "fluxnet"  # $LATENTCUBE_SHARED_DATA or ../shared/data (tests/conftest.py)
HH = DATA / "FLX_CH-Cha_FLUXNET2015_FULLSET_HH_2005-2020_beta-3_sample.csv"
needs_data = pytest.mark.skipif(not HH.exists(), reason="real FLUXNET sample absent")


def test_conversion_factor_derivation():
    # 1 umol CO2 m-2 s-1 = 1e-6 mol C m-2 s-1 x 12 g/mol x 86400 s/d (issue 4); ONEFlux uses 12.0107 g/mol
    assert UMOL_CO2_S_TO_G_C_DAY == pytest.approx(1.0368, abs=1e-12)
    assert ONEFLUX_CO2TOC == pytest.approx(1.03772448, abs=1e-12)


@needs_data
def test_ch_cha_daily_values_match_a_slow_loop_over_the_raw_csv():
    got = read_fluxnet(HH)
    # slow, obvious reference: walk the rows, bucket by the day of TIMESTAMP_START
    sums, counts, good, rows, ta = {}, {}, {}, {}, {}
    with open(HH, newline="") as f:
        for row in csv.DictReader(f):
            day = row["TIMESTAMP_START"][:8]
            rows[day] = rows.get(day, 0) + 1
            g = float(row["GPP_NT_VUT_REF"])
            if g != -9999:
                sums[day] = sums.get(day, 0.0) + g
                counts[day] = counts.get(day, 0) + 1
            qc = float(row["NEE_VUT_REF_QC"])
            good[day] = good.get(day, 0) + (1 if qc in (0, 1) else 0)
            ta.setdefault(day, []).append(float(row["TA_F"]))
    for day in ("20050101", "20050102"):
        d = pd.Timestamp(day)
        assert got.loc[d, "gpp"] == pytest.approx(sums[day] / counts[day] * 1.0368, rel=1e-12)
        assert got.loc[d, "nee_qc_fraction"] == good[day] / 48
        assert got.loc[d, "n_halfhours"] == rows[day] == 48
        assert got.loc[d, "ta"] == pytest.approx(sum(ta[day]) / len(ta[day]))
    # Hand check of day 1: the 48 GPP_NT_VUT_REF values sum to -4.752756 umol m-2 s-1, mean -0.09901575,
    # x 1.0368 = -0.1026595 g C m-2 d-1. Every NEE_VUT_REF_QC in the sample is 3 (poor gap fill) -> 0.
    assert got.loc["2005-01-01", "gpp"] == pytest.approx(-0.1026595, abs=1e-6)
    assert got.loc["2005-01-01", "nee_qc_fraction"] == 0.0
    # the sample ends after 3 half-hours of 2005-01-03: an incomplete day, reported, not dropped
    assert got.loc["2005-01-03", "n_halfhours"] == 3
    assert list(got.index) == list(pd.date_range("2005-01-01", "2005-01-03", name="date"))
    assert got.index.name == "date" and got.attrs["resolution"] == "HH"


def _hh_csv(path: Path, gpp: list[float], qc: list[int], start="201801010000") -> Path:
    t0 = pd.Timestamp(pd.to_datetime(start, format="%Y%m%d%H%M"))
    starts = [t0 + pd.Timedelta(minutes=30 * i) for i in range(len(gpp))]
    df = pd.DataFrame(
        {
            "TIMESTAMP_START": [t.strftime("%Y%m%d%H%M") for t in starts],
            "TIMESTAMP_END": [(t + pd.Timedelta(minutes=30)).strftime("%Y%m%d%H%M") for t in starts],
            "NEE_VUT_REF_QC": qc,
            "GPP_NT_VUT_REF": gpp,
        }
    )
    df.to_csv(path, index=False)
    return path


def test_missing_values_and_qc_fraction_on_a_hand_made_hh_file(tmp_path):
    # day 1: 48 records, GPP 10 except two -9999; QC 0 x 24, 1 x 12, 2 x 12 -> good 36/48 = 0.75
    # day 2: only 24 records, all QC 0 -> 24/48 = 0.5 (missing half-hours count as not good)
    gpp = [10.0] * 46 + [-9999, -9999] + [5.0] * 24
    qc = [0] * 24 + [1] * 12 + [2] * 12 + [0] * 24
    df = read_fluxnet(_hh_csv(tmp_path / "hh.csv", gpp, qc))
    np.testing.assert_allclose(df["gpp"].values, [10 * 1.0368, 5 * 1.0368])
    np.testing.assert_allclose(df["nee_qc_fraction"].values, [0.75, 0.5])
    np.testing.assert_array_equal(df["n_halfhours"].values, [48, 24])


def test_filters_and_site_selection():
    idx = pd.date_range("2019-06-01", periods=6, name="date")
    df = pd.DataFrame(
        {"gpp": [5.0, -0.1, 3.0, np.nan, 2.0, 0.0], "nee_qc_fraction": [0.9, 0.9, 0.69, 0.9, 0.7, 1.0],
         "n_halfhours": 48.0},
        index=idx,
    )
    # day 2 negative GPP, day 3 QC below 0.7, day 4 no GPP; 0.7 and GPP 0 exactly pass
    np.testing.assert_array_equal(passes_quality(df).values, [True, False, False, False, True, True])
    kept = filter_fluxnet(df)
    assert list(kept.index.day) == [1, 5, 6]
    cont = filter_fluxnet(df, drop=False)
    assert len(cont) == 6 and cont["gpp"].isna().sum() == 3
    # 3 of the 5 days with a GPP value pass = 0.6
    assert site_pass_fraction(df) == pytest.approx(0.6)
    assert site_passes(df) and not site_passes(df, min_fraction=0.61)


def test_dd_file_round_trip(tmp_path):
    p = tmp_path / "FLX_XX-Tst_FLUXNET2015_FULLSET_DD_2019-2019_1-4.csv"
    p.write_text(
        "TIMESTAMP,TA_F,SW_IN_F,NEE_VUT_REF,NEE_VUT_REF_QC,GPP_NT_VUT_REF\n"
        "20190101,1.5,50.25,0.3,0.8125,1.25\n"
        "20190102,-9999,-9999,-9999,-9999,-9999\n"
        "20190104,2.0,60,0.1,1,3.5\n"  # 20190103 absent: returned as an all-NaN day
    )
    df = read_fluxnet(p)
    assert df.attrs["resolution"] == "DD"
    assert list(df.index.strftime("%Y%m%d")) == ["20190101", "20190102", "20190103", "20190104"]
    np.testing.assert_array_equal(df["gpp"].values, [1.25, np.nan, np.nan, 3.5])
    np.testing.assert_array_equal(df["nee_qc_fraction"].values, [0.8125, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(df["ta"].values, [1.5, np.nan, np.nan, 2.0])
    assert df["n_halfhours"].isna().all()
    back = read_fluxnet(write_fluxnet_dd(df, tmp_path / "again.csv"))
    pd.testing.assert_frame_equal(back, df, check_like=False)


def test_column_mapping_for_other_conventions(tmp_path):
    p = tmp_path / "eth.csv"
    pd.DataFrame({"TIMESTAMP_END": ["202001010030", "202001010100"], "GPP_DT_CUT_REF": [2.0, 4.0],
                  "QCF_NEE": [0, 2]}).to_csv(p, index=False)
    df = read_fluxnet(p, columns="eth")
    assert df.loc["2020-01-01", "gpp"] == pytest.approx(3.0 * 1.0368)
    assert df.loc["2020-01-01", "nee_qc_fraction"] == pytest.approx(1 / 48)
    df2 = read_fluxnet(p, columns={"gpp": "GPP_DT_CUT_REF", "nee_qc": "QCF_NEE"})
    pd.testing.assert_frame_equal(df, df2)


def test_errors(tmp_path):
    with pytest.raises(FluxnetError, match="no such file"):
        read_fluxnet(tmp_path / "nope.csv")
    p = tmp_path / "nogpp.csv"
    pd.DataFrame({"TIMESTAMP": ["20200101"], "GPP_DT_VUT_REF": [1.0], "NEE_VUT_REF_QC": [1.0]}).to_csv(p, index=False)
    with pytest.raises(FluxnetError, match=r"no GPP column 'GPP_NT_VUT_REF'. GPP-like columns found: \['GPP_DT_VUT_REF'\]"):
        read_fluxnet(p)
    q = tmp_path / "badstamp.csv"
    pd.DataFrame({"TIMESTAMP": ["2020-01-01"], "GPP_NT_VUT_REF": [1.0], "NEE_VUT_REF_QC": [1.0]}).to_csv(q, index=False)
    with pytest.raises(FluxnetError, match="unknown timestamp format in TIMESTAMP"):
        read_fluxnet(q)
    r = tmp_path / "nostamp.csv"
    pd.DataFrame({"DATE": ["20200101"], "GPP_NT_VUT_REF": [1.0], "NEE_VUT_REF_QC": [1.0]}).to_csv(r, index=False)
    with pytest.raises(FluxnetError, match="unknown timestamp format: no TIMESTAMP_START"):
        read_fluxnet(r)
    with pytest.raises(FluxnetError, match="resolution='HR' but the records are 0 days 00:30:00 apart"):
        read_fluxnet(_hh_csv(tmp_path / "hh.csv", [1.0, 2.0], [0, 0]), resolution="HR")
    with pytest.raises(FluxnetError, match="resolution='HH' but the timestamps are daily"):
        read_fluxnet(p, columns={"gpp": "GPP_DT_VUT_REF"}, resolution="HH")


@pytest.mark.skipif(importlib.util.find_spec("latentcube.synthetic") is None, reason="latentcube.synthetic absent")
def test_synthetic_fluxnet_roundtrip(tmp_path):
    from latentcube.synthetic import fluxnet_dd_filename, make_world
    from latentcube.synthetic import write_fluxnet_dd as write_synthetic_dd

    world = make_world(0, n_scenes=0, n_towers=1, tower_size=8, tower_years=(2017, 2017))
    site, truth = next(iter(world.gpp.items()))
    path = write_synthetic_dd(truth, tmp_path / fluxnet_dd_filename(site, 2017, 2017))
    got = read_fluxnet(path)
    assert got.attrs["resolution"] == "DD" and len(got) == len(truth) == 365
    np.testing.assert_array_equal(got["gpp"].to_numpy(), truth["GPP_NT_VUT_REF"].to_numpy())
    np.testing.assert_array_equal(got["nee_qc_fraction"].to_numpy(), truth["NEE_VUT_REF_QC"].to_numpy())
    np.testing.assert_array_equal(got["ta"].to_numpy(), truth["TA_F"].to_numpy())
    assert truth["GPP_NT_VUT_REF"].isna().any()  # the -9999 days come back as NaN


def test_oneflux_factor_option(tmp_path):
    path = tmp_path / "FLX_XX-Tst_FLUXNET2015_FULLSET_HH_2020-2020_beta-3.csv"
    rows = ["TIMESTAMP_START,TIMESTAMP_END,GPP_NT_VUT_REF,NEE_VUT_REF_QC"]
    for k in range(48):
        start = pd.Timestamp("2020-06-01") + pd.Timedelta(minutes=30 * k)
        end = start + pd.Timedelta(minutes=30)
        rows.append(f"{start:%Y%m%d%H%M},{end:%Y%m%d%H%M},2.0,0")
    path.write_text("\n".join(rows) + "\n")
    assert read_fluxnet(path).loc["2020-06-01", "gpp"] == pytest.approx(2.0 * 1.0368)
    assert read_fluxnet(path, gpp_factor=ONEFLUX_CO2TOC).loc["2020-06-01", "gpp"] == pytest.approx(2.0 * 1.03772448)


# ------------------------------------------------------------------ bad files, other layouts, drivers


def _dd_rows(days: int, start: str = "2020-01-01") -> pd.DataFrame:
    t = pd.date_range(start, periods=days, freq="D")
    return pd.DataFrame({"TIMESTAMP": t.strftime("%Y%m%d"), "GPP_NT_VUT_REF": np.arange(days, dtype=float),
                         "NEE_VUT_REF_QC": 1.0})


def test_header_only_empty_and_semicolon_files_are_clear_errors(tmp_path):
    head = tmp_path / "head.csv"
    head.write_text("TIMESTAMP,GPP_NT_VUT_REF,NEE_VUT_REF_QC\n")
    with pytest.raises(FluxnetError, match=r"head.csv has a header but no records .*Fix: pass the complete"):
        read_fluxnet(head)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FluxnetError, match=r"empty.csv is empty. Fix:"):
        read_fluxnet(empty)
    semi = tmp_path / "semi.csv"
    _dd_rows(3).to_csv(semi, sep=";", index=False)
    with pytest.raises(FluxnetError, match=r"separated by semicolons, not commas .*Fix: FLUXNET files are comma-separated"):
        read_fluxnet(semi)


def test_a_file_with_most_days_missing_is_warned_with_the_share(tmp_path):
    df = _dd_rows(8)
    df.loc[2:7, "GPP_NT_VUT_REF"] = -9999  # 2 of 8 days carry GPP
    p = tmp_path / "sparse.csv"
    df.to_csv(p, index=False)
    with pytest.warns(FluxnetWarning, match=r"GPP on only 25% of the 8 days from 2020-01-01 to 2020-01-08 \(2 days\)"):
        got = read_fluxnet(p)
    assert got.attrs["gpp_day_share"] == 0.25
    df.loc[2:4, "GPP_NT_VUT_REF"] = 1.0  # 5 of 8: no warning
    df.to_csv(p, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_fluxnet(p)


def _eth_hh(n: int = 96) -> pd.DataFrame:
    """Two days of an ETH/diive-style half-hourly table indexed by TIMESTAMP_MIDDLE, drivers at 47 m."""
    mid = pd.date_range("2021-07-01 00:15", periods=n, freq="30min", name="TIMESTAMP_MIDDLE")
    k = np.arange(n, dtype=float)
    return pd.DataFrame({"GPP_DT_CUT_REF": k / 10, "QCF_NEE": (k % 3).astype(int), "TA_T1_47_1_gfXG": 10 + k / 48,
                         "SW_IN_T1_47_1_gfXG": 5 * k, "VPD_T1_47_1": 0.5 + k / 96}, index=mid)


def test_parquet_with_timestamp_middle_reads_like_the_csv_hand_values(tmp_path):
    pytest.importorskip("pyarrow")  # the Parquet engine (latentcube[vector], [dev])
    df = _eth_hh()
    pq = tmp_path / "CH-Xxx_eth.parquet"
    df.to_parquet(pq)
    spec = "eth,ta=TA_T1_47_1_gfXG,sw_in=SW_IN_T1_47_1_gfXG,vpd=VPD_T1_47_1"
    got = read_fluxnet(pq, columns=spec)
    # the record of middle 00:15 starts at 00:00: day 1 = records 0..47, day 2 = 48..95
    assert list(got.index) == list(pd.date_range("2021-07-01", periods=2, name="date"))
    assert got.attrs["resolution"] == "HH"
    k = np.arange(96, dtype=float)
    np.testing.assert_allclose(got["gpp"], [k[:48].mean() / 10 * 1.0368, k[48:].mean() / 10 * 1.0368])
    np.testing.assert_allclose(got["nee_qc_fraction"], [32 / 48, 32 / 48])  # flags 0 and 1 of 0, 1, 2 cycling
    np.testing.assert_allclose(got["ta"], [10 + k[:48].mean() / 48, 10 + k[48:].mean() / 48])
    np.testing.assert_allclose(got["vpd"], [0.5 + k[:48].mean() / 96, 0.5 + k[48:].mean() / 96])  # a mapped column: as is
    # the same table as CSV with ISO text stamps gives the same days
    csv = tmp_path / "eth.csv"
    df.reset_index().to_csv(csv, index=False)
    pd.testing.assert_frame_equal(read_fluxnet(csv, columns=spec), got, check_like=True, check_exact=False)
    # a daily Parquet file whose TIMESTAMP holds datetimes is a DD file
    dd = tmp_path / "dd.parquet"
    days = pd.DataFrame({"TIMESTAMP": pd.date_range("2021-07-01", periods=3), "GPP_NT_VUT_REF": [1.0, 2.0, 3.0],
                         "NEE_VUT_REF_QC": 1.0})
    days.to_parquet(dd)
    back = read_fluxnet(dd)
    assert back.attrs["resolution"] == "DD" and back["gpp"].tolist() == [1.0, 2.0, 3.0]


def test_eth_preset_names_absent_drivers_and_candidates(tmp_path):
    pytest.importorskip("pyarrow")  # the Parquet engine (latentcube[vector], [dev])
    pq = tmp_path / "eth.parquet"
    _eth_hh().to_parquet(pq)
    with pytest.warns(FluxnetWarning, match=r"driver columns not found, read without them: ta 'TA_T1_2_1' \(candidates: "
                      r"\['TA_T1_47_1_gfXG'\]\); sw_in 'SW_IN_T1_2_1' \(candidates: \['SW_IN_T1_47_1_gfXG'\]\); vpd "
                      r"'VPD_T1_2_1' \(candidates: \['VPD_T1_47_1'\]\)\. Fix: .*--flux-columns eth,ta=<column>"):
        got = read_fluxnet(pq, columns="eth")
    assert "ta" not in got and "gpp" in got
    with pytest.raises(FluxnetError, match=r"driver columns not found: ta 'TA_T1_2_1' \(candidates: \['TA_T1_47_1_gfXG'\]\)"):
        read_fluxnet(pq, columns="eth", require=("ta",))
    # the preset's own VPD column (kPa) comes back in hPa
    renamed = _eth_hh().rename(columns={"VPD_T1_47_1": "VPD_T1_2_1"})
    renamed.to_parquet(pq)
    with pytest.warns(FluxnetWarning):
        got = read_fluxnet(pq, columns="eth")
    np.testing.assert_allclose(got["vpd"].iloc[0], 10 * (0.5 + np.arange(48).mean() / 96))


def test_column_specs():
    from latentcube.sources.fluxnet import parse_columns

    cols, factors = parse_columns("eth,ta=TA_X")
    assert cols["ta"] == "TA_X" and cols["gpp"] == "GPP_DT_CUT_REF" and factors == {"vpd": 10.0}
    assert parse_columns("gpp=GPP_DT_VUT_REF")[0]["gpp"] == "GPP_DT_VUT_REF"
    assert parse_columns("eth,vpd=V")[1] == {}  # a user's own VPD column is taken as it is
    with pytest.raises(FluxnetError, match=r"unknown column preset 'ethz'. Fix: .*--flux-columns"):
        parse_columns("ethz")
    with pytest.raises(FluxnetError, match=r"unknown keys \['rh'\]"):
        parse_columns("rh=RH")
