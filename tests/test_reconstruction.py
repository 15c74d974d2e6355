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


def test_date_pca_with_full_code_size_is_lossless_and_codes_each_date_on_its_own():
    from latentcube.evaluate.reconstruction import _date_pca

    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, 3, 2, 3, 3, generator=g)
    w = context_weights(3, 3, 3)
    # C*H*W = 18 codes per date span every single-date patch: lossless on any data
    torch.testing.assert_close(_date_pca(x, x[:4], 18, w), x[:4], atol=1e-5, rtol=0)
    # with fewer codes each date is still reconstructed from itself alone
    rec = _date_pca(x, x[:4], 2, w)
    y = x[:4].clone()
    y[:, 0] = torch.rand(4, 2, 3, 3, generator=g)
    rec_y = _date_pca(x, y, 2, w)
    torch.testing.assert_close(rec_y[:, 1:], rec[:, 1:])
    assert not torch.allclose(rec_y[:, 0], rec[:, 0])


def test_date_pca_prefers_the_centre_pixel_and_matches_a_hand_fit_for_one_date():
    from latentcube.evaluate.reconstruction import _date_pca

    g = torch.Generator().manual_seed(3)
    x = torch.rand(300, 1, 1, 5, 5, generator=g)
    w = context_weights(1, 5, 5)
    rec = _date_pca(x, x, 1, w)
    err = (rec - x).abs().mean(0)[0, 0]
    assert err[2, 2] == err.min() and err[2, 2] < err[0, 0]
    # one date: the same as the joint patch PCA with one code
    torch.testing.assert_close(rec, _patch_pca(x, x, 1, w), atol=1e-5, rtol=0)


def test_top_basis_spans_the_svd_subspace_for_tall_and_wide_matrices():
    from latentcube.evaluate.reconstruction import _top_basis

    g = torch.Generator().manual_seed(4)
    for shape in [(60, 15), (15, 60)]:
        a = torch.randn(*shape, generator=g, dtype=torch.float64)
        _, _, v = torch.linalg.svd(a, full_matrices=False)
        basis = _top_basis(a, 4)
        assert basis.shape == (shape[1], 4)
        torch.testing.assert_close(basis.T @ basis, torch.eye(4, dtype=torch.float64))  # orthonormal
        torch.testing.assert_close(basis @ basis.T, v[:4].T @ v[:4])  # same projector as the SVD's top 4
    # a rank-deficient wide matrix: zero directions are dropped, not divided by zero
    low = torch.randn(10, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
    basis = _top_basis(low, 5)
    assert basis.shape == (30, 2) and torch.isfinite(basis).all()
