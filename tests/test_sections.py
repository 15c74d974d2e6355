import json

import numpy as np
import pytest

from latentcube.evaluate.sections import read_sections, table, write_section


def test_sections_roundtrip_order_and_replacement(tmp_path):
    fig = tmp_path / "figs" / "a.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    write_section(tmp_path, "gpp", order=20, title="GPP", text=["p"],
                  tables=[table("t", ["site", "r2"], [["A", np.float32(0.5)], ["B", float("nan")]])],
                  figures=[(fig, "cap")], data={"x": np.int64(3)})
    write_section(tmp_path, "land_gpp", order=5, title="other")
    write_section(tmp_path, "gpp", order=10, title="GPP v2")  # replaces the first, keeps land_gpp
    docs = read_sections(tmp_path)
    assert [(d["order"], d["name"], d["title"]) for d in docs] == [(5, "land_gpp", "other"), (10, "gpp", "GPP v2")]
    first = json.loads((tmp_path / "sections" / "005_land_gpp.json").read_text())
    assert first["figures"] == [] and first["tables"] == []


def test_sections_json_safe_values_and_relative_figures(tmp_path):
    fig = tmp_path / "a.png"
    write_section(tmp_path, "s", order=1, title="T", tables=[table("t", ["v"], [[float("inf")], [np.float64(2.5)]])],
                  figures=[(fig, "c")], data={"n": np.int64(3)})
    doc = read_sections(tmp_path)[0]
    assert doc["tables"][0]["rows"] == [[None], [2.5]]
    assert doc["figures"] == [{"path": "a.png", "caption": "c"}]
    assert doc["data"] == {"n": 3}


def test_sections_errors(tmp_path):
    with pytest.raises(ValueError, match="has 1 values for 2 columns"):
        table("t", ["a", "b"], [[1]])
    with pytest.raises(ValueError, match="outside the run directory"):
        write_section(tmp_path / "run", "s", order=1, title="T", figures=[(tmp_path / "x.png", "c")])
    with pytest.raises(ValueError, match="alphanumeric"):
        write_section(tmp_path, "a b", order=1, title="T")
    assert read_sections(tmp_path / "missing") == []
