"""The shipped stage configs (``latentcube configs``, ``lc.write_recipe``): copied whole, never over a user's edits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import latentcube as lc
from latentcube.config import ConfigError
from latentcube.train import load_train_config
from latentcube.train.recipes import RECIPES, recipe_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", RECIPES)
def test_write_recipe_copies_the_three_stage_configs_byte_for_byte(tmp_path, name):
    paths = lc.write_recipe(name, tmp_path / "new" / "cfg")
    assert [p.name for p in paths] == ["s1.yaml", "s2.yaml", "fusion.yaml"]
    for p in paths:
        assert p.read_bytes() == (recipe_dir(name) / p.name).read_bytes()
        assert load_train_config(p).stage == p.stem
    # The repository's configs/ points at the same files (what the docs and benchmarks name).
    repo_dir = REPO / "configs" if name == "paper" else REPO / "configs" / name if name == "area" else None
    if repo_dir is not None:
        assert all((repo_dir / p.name).read_bytes() == p.read_bytes() for p in paths)


def test_write_recipe_keeps_existing_files_and_writes_nothing(tmp_path):
    (tmp_path / "s2.yaml").write_text("my edits\n")
    with pytest.raises(ConfigError, match=r"s2.yaml already exists; nothing was written. Fix: pass --overwrite"):
        lc.write_recipe("area", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.yaml"]
    assert (tmp_path / "s2.yaml").read_text() == "my edits\n"
    lc.write_recipe("area", tmp_path, overwrite=True)
    assert (tmp_path / "s2.yaml").read_bytes() == (recipe_dir("area") / "s2.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"no recipe 'aera'. Fix: use one of area, demo, paper"):
        lc.write_recipe("aera", tmp_path)


def test_cli_configs_writes_into_a_relative_folder_of_the_working_directory(tmp_path):
    cmd = [sys.executable, "-m", "latentcube.cli", "configs", "area", "--out", "my area"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"my area/{s}.yaml" for s in ("s1", "s2", "fusion")]
    cfg = load_train_config(tmp_path / "my area" / "fusion.yaml")
    assert cfg.model["context_px"] == 5  # the area recipe, not the paper's
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exist; nothing was written" in again.stderr
    assert "Traceback" not in again.stderr
