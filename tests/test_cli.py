"""The command line: synth -> info, one-line errors, --debug tracebacks, demo quick looks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from latentcube.cli import main


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentcube.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_synth_then_info(tmp_path):
    # Deeper than a terminal is wide: printed paths must stay whole lines (scripts read them).
    world = tmp_path / ("a_folder_name_of_some_length_" * 3) / "d"
    proc = run(["synth", "--out", str(world)])
    assert proc.returncode == 0, proc.stderr
    cubes = [line for line in proc.stdout.splitlines() if line.endswith(".zarr")]
    assert len(str(world)) > 80 and len(cubes) == 9 and all(c.startswith(str(world) + "/") for c in cubes)
    info = run(["info", cubes[0], "--json"])
    assert info.returncode == 0, info.stderr
    assert '"valid": "yes"' in info.stdout and '"crs": "EPSG:32632"' in info.stdout
    table = run(["info", cubes[0]])
    assert "s2 valid fraction" in table.stdout and "B02 B03 B04" in table.stdout
    assert (world / "fluxnet").is_dir()


def test_bad_input_prints_one_line_and_exits_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", str(tmp_path / "missing.zarr")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "CubeError: no such cube" in err and "Traceback" not in err
    # The message is printed as it is, not read as rich markup ("[red]" would vanish).
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path / "[red]missing.zarr")])
    assert f"{tmp_path / '[red]missing.zarr'}" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    proc = run(["info", str(tmp_path / "missing.zarr"), "--debug"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CubeError" in proc.stderr


def test_usage_errors_exit_2():
    proc = run(["info"])
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


@pytest.mark.parametrize("option", ["--threads", "--workers"])
def test_embed_refuses_zero_threads_or_workers(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(tmp_path / "c.zarr"), "--checkpoint", str(tmp_path / "m.pt"), "--out",
              str(tmp_path / "e.zarr"), option, "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{option}'" in err and "greater than or equal to 1" in err


def test_invalid_cube_fails_validate(tmp_path):
    import numpy as np
    import pandas as pd

    from latentcube.cube import new_cube, save_cube

    ds = new_cube(s2=np.full((2, 10, 4, 4), 1500, "float32"), time=pd.date_range("2020-01-01", periods=2),
                  y=100.0 - 10 * np.arange(4), x=10.0 * np.arange(4), crs="EPSG:32632")
    save_cube(ds, tmp_path / "dn.zarr")
    proc = run(["validate", str(tmp_path / "dn.zarr")])
    assert proc.returncode == 1 and "divide by 10000" in proc.stderr


@pytest.mark.slow
def test_demo_without_training_writes_quicklooks_and_report(demo_no_train):
    out = demo_no_train.out  # `latentcube demo --out demo-output --no-train`, run outside the repository
    for name in ("s2_true_colour.png", "class_timeseries.png", "report.md", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    assert "| broadleaf_forest |" in report and "](s2_true_colour.png)" in report
    assert "report: demo-output/report.html" in demo_no_train.stdout


def test_model_info_presets():
    proc = run(["model-info", "--no-flops", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert '"s2": 9' in proc.stdout and '"fused": 7' in proc.stdout
