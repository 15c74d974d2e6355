"""benchmarks/code_frontier.py: its neighbourhood mean and its clean skip without the real chip."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "code_frontier.py"


def _module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("code_frontier", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_nanmean_filter_hand_computed():
    """3 x 3 NaN-mean with edge replication; the pixel's own NaN stays NaN, neighbours' NaNs are skipped."""
    z = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0], [7.0, 8.0, 9.0]], np.float32)[None, None]
    out = _module().nanmean_filter(z, 3)[0, 0]
    # top-left: window rows/cols {0,0,1} x {0,0,1} (edge repeated): 1,1,2 / 1,1,2 / 4,4,nan
    assert np.isclose(out[0, 0], (1 + 1 + 2 + 1 + 1 + 2 + 4 + 4) / 8)
    assert np.isnan(out[1, 1])
    assert np.isclose(out[0, 1], (1 + 2 + 3 + 1 + 2 + 3 + 4 + 6) / 8)
    assert np.isclose(out[2, 2], (6 + 6 + 8 + 9 + 9 + 8 + 9 + 9) / 8)


def test_skips_cleanly_without_the_chip(tmp_path):
    env = {**os.environ, "LATENTCUBE_SHARED_DATA": str(tmp_path / "absent")}
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", "w"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "code_frontier: skipped, the WorldCereal chip is absent" in res.stdout
    assert str(tmp_path / "absent") in res.stdout and not (tmp_path / "w").exists()


def test_contextual_autoencoder_fixed_dims_are_pca_of_the_context():
    """With ``field_dims=m`` the code's first m dims are PCA-m of the context spectra (sklearn, standardised);
    the rest is learned, NaN pixels stay NaN, and the own MAE is a finite reflectance error."""
    from types import SimpleNamespace

    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    T, H, W, C = 3, 6, 8, 4
    pix = rng.normal(0.2, 0.05, (T, H, W, C)).astype(np.float32)
    pix[1, 2, 3] = np.nan
    clear = np.isfinite(pix).all(-1)
    cols = np.arange(W)[None, None, :]
    f = SimpleNamespace(pix=pix, clear=clear, train=clear & (cols < 5), held_out=clear & (cols >= 5))
    near = _module().nanmean_filter(pix.transpose(0, 3, 1, 2), 3).transpose(0, 2, 3, 1)
    z, own = _module().autoencoder_codes(f, 3, steps=5, seed=0, context=near, field_dims=2)
    assert z.shape == (T, 3, H, W) and np.isfinite(own) and own > 0
    assert np.isnan(z[1, :, 2, 3]).all() and np.isfinite(z[0]).all()
    pca = PCA(2).fit(near[f.train])
    ref = pca.transform(near[0].reshape(-1, C)) / pca.transform(near[f.train]).std(0)
    np.testing.assert_allclose(z[0, :2].reshape(2, -1).T, ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(z[0, 2], 0)
