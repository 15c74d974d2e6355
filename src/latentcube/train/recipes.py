"""The stage configs shipped inside the package, and copying them into a working folder.

Three recipes, each one YAML per stage (``s1.yaml``, ``s2.yaml``, ``fusion.yaml``):

- ``area``: one area of interest on CPU in minutes (a single cube, a spatial holdout); the recommended
  recipe, with every departure from the paper measured in docs/method.md;
- ``demo``: what ``latentcube demo`` trains on the synthetic world;
- ``paper``: the paper's settings (many cubes, a site plan, GPU-sized training).

They ship as package data, so ``latentcube configs area`` works after ``pip install`` from any folder.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from latentcube.config import ConfigError

RECIPES = ("area", "demo", "paper")
STAGES = ("s1", "s2", "fusion")


def recipe_dir(name: str) -> Path:
    """The folder of the installed package holding recipe ``name``'s stage configs."""
    if name not in RECIPES:
        raise ConfigError(f"no recipe {name!r}. Fix: use one of {', '.join(RECIPES)}")
    # Package data installs as plain files (no zip-safe install), so the Traversable is a real folder.
    folder = Path(str(resources.files("latentcube") / "configs" / name))
    if not all((folder / f"{stage}.yaml").is_file() for stage in STAGES):
        raise FileNotFoundError(f"the {name} configs are missing from the installed package ({folder}). "
                                "Fix: reinstall latentcube (pip install --force-reinstall latentcube).")
    return folder


def write_recipe(name: str, out_dir: str | Path = ".", *, overwrite: bool = False) -> list[Path]:
    """Copy recipe ``name``'s ``s1.yaml``, ``s2.yaml`` and ``fusion.yaml`` into ``out_dir`` (created if
    needed) and return their paths. Existing files are kept unless ``overwrite``: nothing is written
    then, so a half-edited set is never mixed with fresh copies."""
    src = recipe_dir(name)
    out = Path(out_dir)
    targets = [out / f"{stage}.yaml" for stage in STAGES]
    taken = [str(t) for t in targets if t.exists()]
    if taken and not overwrite:
        raise ConfigError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; nothing was written. "
                          "Fix: pass --overwrite (Python: overwrite=True), or choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    for stage, target in zip(STAGES, targets, strict=True):
        shutil.copyfile(src / f"{stage}.yaml", target)
    return targets
