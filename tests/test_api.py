"""The front door: ``import latentcube as lc`` exposes the public API lazily, and the README's Python
snippet runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import latentcube

README = Path(__file__).resolve().parents[1] / "README.md"


def test_all_names_resolve_lazily_to_their_modules():
    assert set(latentcube.__all__) == {"__version__", *latentcube._LAZY}
    for name, module in latentcube._LAZY.items():
        obj = getattr(latentcube, name)
        assert obj.__module__.startswith(module), (name, obj.__module__)
    assert latentcube.load_train_config is __import__("latentcube.train", fromlist=["x"]).load_train_config
    assert issubclass(latentcube.LatentcubeError, Exception)
    with pytest.raises(AttributeError, match="module 'latentcube' has no attribute 'embed_everything'"):
        latentcube.embed_everything  # noqa: B018


def test_import_loads_no_heavy_dependency():
    code = "import sys, latentcube; print(sorted(m for m in ('torch', 'dask', 'matplotlib', 'lightning') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def readme_snippet() -> str:
    """The ```python block of the README's "From Python" section."""
    section = README.read_text(encoding="utf-8").split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_snippet_runs(tmp_path):
    code = readme_snippet()
    assert code.count("\n") <= 12 and "import latentcube as lc" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_pipeline_outputs(tmp_path)


def _check_pipeline_outputs(folder: Path) -> None:
    """What the snippet promises: a 7-d embedding per pixel and date, a 5-day gap-filled axis, one
    GeoTIFF per gap-filled date with 7 bands on the cube's grid, and a PCA map."""
    import numpy as np
    import rasterio
    from matplotlib.image import imread

    emb = latentcube.open_embedding(folder / "emb.zarr")  # (time, feature, y, x)
    filled = latentcube.open_embedding(folder / "emb_5d.zarr")
    assert emb.sizes["feature"] == 7 and np.isfinite(emb.values).mean() > 0.1
    days = np.diff(filled["time"].values).astype("timedelta64[D]").astype(int)
    assert set(days.tolist()) == {5}
    tifs = sorted((folder / "tifs").glob("*.tif"))
    assert len(tifs) == filled.sizes["time"]
    with rasterio.open(tifs[0]) as src:
        assert src.count == 7 and (src.height, src.width) == (emb.sizes["y"], emb.sizes["x"])
    assert imread(folder / "pca.png").ndim == 3
