"""FLUXNET reader: daily aggregation of the real CH-Cha HH sample checked against a slow loop over the
raw CSV, -9999 handling, the paper's filters, DD round trips and error messages."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentcube.sources.fluxnet import (
    ONEFLUX_CO2TOC,
    UMOL_CO2_S_TO_G_C_DAY,
    FluxnetError,
    filter_fluxnet,
    passes_quality,
    read_fluxnet,
    site_pass_fraction,
    site_passes,
    write_fluxnet_dd,
)

DATA = Path("/work/shared/data/fluxnet")
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
