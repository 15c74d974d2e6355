"""Linear baselines of the demo report: exactness where they must be exact, weighting as documented."""

from __future__ import annotations

import torch

from latentcube.evaluate.reconstruction import _center_pca, _patch_pca
from latentcube.losses import context_weights


def test_patch_pca_with_full_code_size_reconstructs_training_data_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 2, 5, 5, generator=g)
    w = context_weights(3, 5, 5)
    # 12 samples span at most 11 centred directions: a code of 11 is lossless on the training set
    rec = _patch_pca(x, x, 11, w)
    torch.testing.assert_close(rec, x, atol=1e-4, rtol=0)


def test_patch_pca_prefers_heavily_weighted_elements():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 3, 1, 5, 5, generator=g)
    w = context_weights(3, 5, 5)
    rec = _patch_pca(x, x, 1, w)
    err = (rec - x).abs().mean(0)[:, 0]  # (T, H, W)
    # with one component, the centre element (largest weight) is reconstructed best
    assert err[1, 2, 2] < err[0, 0, 0]
    assert err[1, 2, 2] == err.min()


def test_patch_pca_ignores_invalid_inputs_in_the_fit():
    x = torch.rand(20, 3, 2, 5, 5)
    y = x.clone()
    y[:5, 0] = float("nan")
    rec = _patch_pca(y, x, 19, context_weights(3, 5, 5))
    assert torch.isfinite(rec).all()


def test_center_pca_k_equal_to_bands_is_lossless_and_k1_is_not():
    x = torch.rand(50, 3, 4, 5, 5)
    assert _center_pca(x, x, 4)["center_mae"] < 1e-6
    assert _center_pca(x, x, 1)["center_mae"] > 1e-3
