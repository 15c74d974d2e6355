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


def test_other_errors_get_the_debug_hint(tmp_path, capsys):
    # Not a LatentcubeError (a missing file reported by the library): one line plus the --debug hint.
    with pytest.raises(SystemExit) as exc:
        main(["plot-training", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 1 and "FileNotFoundError: no metrics.csv in" in err
    assert "(run with --debug for the traceback)" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from latentcube.cube import CubeError

    with pytest.raises(CubeError, match="no such cube"):  # re-raised: Python prints the traceback
        main(["info", str(tmp_path / "missing.zarr"), "--debug"])


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2 and "Missing argument" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--threads", "--workers"])
def test_embed_refuses_zero_threads_or_workers(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(tmp_path / "c.zarr"), "--checkpoint", str(tmp_path / "m.pt"), "--out",
              str(tmp_path / "e.zarr"), option, "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{option}'" in err and "greater than or equal to 1" in err


def test_invalid_cube_fails_validate(tmp_path, capsys):
    import numpy as np
    import pandas as pd

    from latentcube.cube import new_cube, save_cube

    ds = new_cube(s2=np.full((2, 10, 4, 4), 1500, "float32"), time=pd.date_range("2020-01-01", periods=2),
                  y=100.0 - 10 * np.arange(4), x=10.0 * np.arange(4), crs="EPSG:32632")
    save_cube(ds, tmp_path / "dn.zarr")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "dn.zarr")])
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines on stderr
    assert exc.value.code == 1 and "divide by 10000" in err and "--debug" not in err  # a CubeError: no hint


@pytest.mark.slow
def test_demo_without_training_writes_quicklooks_and_report(demo_no_train):
    out = demo_no_train.out  # `latentcube demo --out demo-output --no-train`, run outside the repository
    for name in ("s2_true_colour.png", "class_timeseries.png", "report.md", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    assert "| broadleaf_forest |" in report and "](s2_true_colour.png)" in report
    assert "report: demo-output/report.html" in demo_no_train.stdout


def test_model_info_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["model-info", "--no-flops", "--json"])
    printed = capsys.readouterr()
    assert exc.value.code == 0, printed.err
    assert '"s2": 9' in printed.out and '"fused": 7' in printed.out


@pytest.mark.parametrize("command", [["info"], ["validate"], ["configs"], ["model-info"], ["train"], ["embed"],
                                     ["plot-training"], ["gapfill"], ["pca"], ["export"], ["aggregate"], ["sample"],
                                     ["report"], ["evaluate", "probe"]])
def test_usage_lines_name_arguments_in_capitals(command, capsys):
    """`latentcube sample --help` showed `{emb}`, read as an unfilled placeholder (user walkthrough): every
    argument is named in capitals, in the usage line and in the Arguments panel alike (typer 0.29 puts a
    required argument in braces in the usage line)."""
    import re

    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    text = capsys.readouterr().out
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert exc.value.code == 0 and "[OPTIONS]" in usage
    assert not re.search(r"[{\[][a-z_]+[}\]]", usage.replace("[OPTIONS]", "")), usage
    in_panel = text[text.index("Arguments"):text.index("Options")] if "Arguments" in text else ""
    named = re.findall(r"│ [* ]\s+([A-Za-z_]+)\s+<", in_panel)
    assert named and all(name.isupper() for name in named), named
