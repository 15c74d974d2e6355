"""Installed anywhere: a non-editable install of the package, used from a folder outside the repository,
finds its demo configs inside the installed package, copies the area recipe and runs ``latentcube demo``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_pip_installed_package_runs_the_demo_outside_the_repository(tmp_path):
    # A copy of what a source distribution holds, so the build writes nothing into the checkout.
    src = tmp_path / "latentcube-src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # A fresh venv that reuses this environment's installed dependencies (a plain path line, so the
    # checkout's editable install, itself a .pth file there, is not seen) and gets the package itself
    # from a regular, non-editable install.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)  # this pip installs into it
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (site / "reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          src], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import latentcube, latentcube.train as t\n"
             "d = latentcube.demo_config_dir()\n"
             "print(latentcube.__file__); print(d)\n"
             "print(*[t.load_train_config(d / f'{s}.yaml').stage for s in ('s1', 's2', 'fusion')])\n")
    lines = _run([py, "-c", probe], cwd=elsewhere).stdout.splitlines()
    assert Path(lines[0]).is_relative_to(site) and Path(lines[1]) == site / "latentcube" / "configs" / "demo"
    assert lines[2] == "s1 s2 fusion"
    _run([venv / "bin" / "latentcube", "configs", "area", "--out", "cfg"], cwd=elsewhere)  # every recipe is package data
    for stage in ("s1", "s2", "fusion"):
        assert (elsewhere / "cfg" / f"{stage}.yaml").read_bytes() == (REPO / "configs" / "area" / f"{stage}.yaml").read_bytes()

    proc = _run([venv / "bin" / "latentcube", "demo", "--out", "X", "--no-train"], cwd=elsewhere)
    assert "report: X/report.html" in proc.stdout
    report = (elsewhere / "X" / "report.md").read_text(encoding="utf-8")
    assert "Figure missing" not in report and "](s2_true_colour.png)" in report
