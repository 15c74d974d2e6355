"""PCA warm start of the sensor autoencoders (nn.linear_init) and the loss-derived centre emphasis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from latentcube.losses import S1PretrainConfig, S2PretrainConfig, context_weights
from latentcube.nn import SensorAutoencoder, s1_config, s2_config
from latentcube.nn.linear_init import pca_warm_start, weighted_date_pca
from latentcube.train import centre_emphasis

SMALL = dict(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, n_heads=2, ffn_dim=16, decoder_d_model=16,
             decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4, dropout=0.0,
             linear_patch=True)


def _low_rank_patches(n: int, rank: int, c: int, seed: int = 0, nan_fraction: float = 0.0) -> torch.Tensor:
    """(n, 11, c, 15, 15) patches: every date a mix of ``rank`` fixed spatial-spectral patterns + a constant."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(rank, c, 15, 15, generator=g) * 0.1
    codes = torch.randn(n, 11, rank, generator=g)
    codes -= codes.mean(dim=(0, 1))  # band means are then exactly 0.3: the centred data has rank ``rank``
    x = 0.3 + torch.einsum("ntk,kchw->ntchw", codes, patterns)
    if nan_fraction:
        x[torch.rand(x.shape, generator=g) < nan_fraction] = float("nan")
    return x


def test_weighted_date_pca_weights_elements_by_the_spatial_weights():
    # Two independent random elements with equal variance: the heavier-weighted one wins the first direction.
    x = torch.zeros(500, 1, 1, 3, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x[:, 0, 0, 0, 0] = torch.randn(500, generator=g, dtype=torch.float64)
    x[:, 0, 0, 1, 1] = torch.randn(500, generator=g, dtype=torch.float64)
    weights = torch.full((1, 3, 3), 0.1, dtype=torch.float64)
    weights[0, 1, 1] = 1.0
    basis, sw = weighted_date_pca(x, weights, 1)
    # (sample correlation of the two random columns keeps it just below 1)
    assert basis.shape == (9, 1) and abs(float(basis[4, 0])) > 0.99 and abs(float(basis[0, 0])) < 0.05
    torch.testing.assert_close(sw.reshape(3, 3), (weights[0] / weights[0].max()).sqrt())


@pytest.mark.parametrize("preset", [s1_config, pytest.param(s2_config, marks=pytest.mark.slow)])
def test_warm_started_model_reconstructs_low_rank_patches(preset):
    torch.manual_seed(0)
    cfg = preset(**SMALL)
    model = SensorAutoencoder(cfg).eval()
    x = _low_rank_patches(120, cfg.latent_dim, cfg.n_bands)
    days = torch.arange(11.0).repeat(120, 1) * 5
    weights = context_weights(11, 15, 15)
    before = (model(x, days)[0] - x).abs().mean()
    summary = pca_warm_start(model, x, weights)
    with torch.no_grad():
        recon, z = model(x, days)
    # rank == latent size: the linear code is exact, and the non-linear paths start silent
    assert summary["explained"] == pytest.approx(1.0, abs=1e-6)
    assert (recon - x).abs().max() < 1e-4 < before
    # the latent is the linear code of the date's own patch: dates are coded independently
    x2 = x.clone()
    x2[:, 3] = x[:, 7]
    with torch.no_grad():
        z2 = model.encode_patches(x2, days)
    torch.testing.assert_close(z2[:, 3], z[:, 7], atol=1e-5, rtol=0)


def test_warm_start_ignores_invalid_targets_and_keeps_scene_equivalence():
    torch.manual_seed(0)
    cfg = s2_config(**SMALL)
    model = SensorAutoencoder(cfg).eval()
    x = _low_rank_patches(150, 3, cfg.n_bands, nan_fraction=0.2)
    pca_warm_start(model, x, context_weights(11, 15, 15))
    assert torch.isfinite(model.decoder.linear.weight).all() and torch.isfinite(model.encoder.patch_linear.weight).all()
    # dense scene path == per-patch path with the fitted linear code (centre and scale buffers included)
    scene = _low_rank_patches(1, 3, cfg.n_bands, seed=5, nan_fraction=0.1)[0, :, :, :, :]  # (11, C, 15, 15)
    days = torch.cumsum(torch.full((11,), 6.0), 0)
    with torch.no_grad():
        dense = model.encode_scene(scene, days)
        padded = torch.nn.functional.pad(scene, (7, 7, 7, 7), value=float("nan"))
        patch = padded[None, :, :, 3:18, 9:24]  # pixel (3, 9), the window is all 11 dates
        torch.testing.assert_close(model.encode_patches(patch, days[None])[0], dense[:, :, 3, 9], atol=1e-5, rtol=0)


def test_warm_start_rejects_models_without_the_linear_paths():
    model = SensorAutoencoder(dataclasses.replace(s2_config(**SMALL), linear_patch=False))
    with pytest.raises(ValueError, match="linear_patch=True"):
        pca_warm_start(model, _low_rank_patches(10, 2, 10), context_weights(11, 15, 15))


def test_centre_emphasis_follows_the_loss():
    weights = torch.ones(11, 15, 15)
    x = torch.full((4, 11, 10, 15, 15), 0.2)
    x[:, :, :, 0, 0] = float("nan")  # one invalid pixel column: 11 dates x 10 bands fewer valid elements
    # S1: weighted MAE only -> the centre keeps its loss weight
    assert centre_emphasis(S1PretrainConfig(), weights, x) == 1.0
    # S2: 1 + (lambda_sam / lambda_mae) * sum(w over valid) / (w_c * |x_c|), by hand
    cfg = S2PretrainConfig(lambda_mae=0.25, lambda_sam=0.75)
    total = 11 * 10 * (15 * 15 - 1)
    norm = (10 * 0.2**2) ** 0.5
    assert centre_emphasis(cfg, weights, x) == pytest.approx(1 + 3.0 * total / norm, rel=1e-5)


def _weights_and_small_sensor_models() -> tuple[torch.Tensor, SensorAutoencoder, SensorAutoencoder]:
    torch.manual_seed(0)
    return (context_weights(11, 15, 15), SensorAutoencoder(s1_config(**SMALL)).eval(),
            SensorAutoencoder(s2_config(**SMALL)).eval())


@pytest.mark.slow
def test_fusion_warm_start_is_a_lossless_affine_code_when_the_latents_fit():
    from latentcube.nn import FusionConfig, FusionModel
    from latentcube.nn.linear_init import fusion_warm_start

    weights, s1, s2 = _weights_and_small_sensor_models()
    g = torch.Generator().manual_seed(3)
    codes = torch.randn(120, 11, 4, generator=g)
    codes -= codes.mean(dim=(0, 1))
    # both sensors see the same 4 hidden factors (rank 2 of them for S1, 3 for S2): 5 latent numbers, 7 fused
    x1 = 0.5 + torch.einsum("ntk,kchw->ntchw", codes[..., :2], torch.randn(2, 2, 15, 15, generator=g) * 0.1)
    x2 = 0.3 + torch.einsum("ntk,kchw->ntchw", codes[..., 1:], torch.randn(3, 10, 15, 15, generator=g) * 0.1)
    days = torch.arange(11.0).repeat(120, 1) * 5
    pca_warm_start(s1, x1, weights)
    pca_warm_start(s2, x2, weights)
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig()).freeze_sensor_models().eval()
    x = {"s1": x1, "s2": x2}
    summary = fusion_warm_start(fused, x, days, {"s1": weights, "s2": weights})
    assert summary["explained"] == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        out = fused(x, days)
        for name in ("s1", "s2"):
            assert (out.reconstructions[name] - x[name]).abs().max() < 1e-3, name
        # affine in the input: the code of a mean of two patch sets is the mean of their codes
        a, b = {k: v[:10] for k, v in x.items()}, {k: v[10:20] for k, v in x.items()}
        mid = fused.encode_patches({k: (a[k] + b[k]) / 2 for k in x}, days[:10])
        torch.testing.assert_close(mid, (fused.encode_patches(a, days[:10]) + fused.encode_patches(b, days[:10])) / 2,
                                   atol=1e-5, rtol=0)


def test_models_without_the_linear_path_keep_their_state_dict_keys():
    # Model files written before the path existed must still load with strict keys.
    keys = set(SensorAutoencoder(s2_config()).state_dict())
    assert not any("patch_" in k for k in keys)
    with_path = set(SensorAutoencoder(s2_config(linear_patch=True)).state_dict())
    assert with_path - keys == {"encoder.patch_linear.weight", "encoder.patch_centre", "encoder.patch_scale"}


def test_context_projection_is_the_neighbourhood_mean_of_the_code():
    # Reference: the per-pixel code map of a scene (explicit patch sums), then scipy's 3 x 3 box mean.
    from scipy.ndimage import uniform_filter

    from latentcube.nn.linear_init import context_projection

    g = torch.Generator().manual_seed(3)
    proj = torch.zeros(2, 3, 9, 9, dtype=torch.float64)
    proj[:, :, 1:-1, 1:-1] = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)  # no crop needed
    scene = torch.randn(3, 30, 30, generator=g, dtype=torch.float64)

    def code_map(kernel):  # code at pixel (i, j) = sum(kernel * patch centred at (i, j)), interior only
        return torch.nn.functional.conv2d(scene[None], kernel)[0].numpy()  # (k, 22, 22)

    expected = uniform_filter(code_map(proj), size=(1, 3, 3), mode="constant")[:, 1:-1, 1:-1]
    got = code_map(context_projection(proj, 3))[:, 1:-1, 1:-1]
    assert got.shape == (2, 20, 20)
    assert abs(expected).max() > 1.0
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=1e-10, rtol=0)


def test_warm_start_context_dims_are_the_pixel_pca_and_its_neighbourhood_mean():
    # Reference: scikit-learn's PCA of the patches' pixel spectra and scipy's 3 x 3 box mean of its codes.
    from scipy.ndimage import uniform_filter
    from sklearn.decomposition import PCA

    cfg = s2_config(**SMALL)
    g = torch.Generator().manual_seed(7)
    # every pixel its own mix of 10 spectra (full rank), so pixel and neighbourhood codes differ
    spectra = torch.randn(10, cfg.n_bands, generator=g) * torch.logspace(0, -1.5, 10)[:, None] * 0.1
    x = 0.3 + torch.einsum("ntkhw,kc->ntchw", torch.randn(150, 11, 10, 15, 15, generator=g), spectra)
    weights = context_weights(11, 15, 15)[5].expand(11, 15, 15)  # flat in time: every date one sample
    model = SensorAutoencoder(cfg).eval()
    pca_warm_start(model, x, weights, centre_boost=400.0, context_dims=3, context_px=3)
    scene = 0.3 + torch.einsum("tkhw,kc->tchw", torch.randn(11, 10, 40, 40, generator=g), spectra)
    days = torch.cumsum(torch.full((11,), 6.0), 0)
    with torch.no_grad():
        z = model.encode_scene(scene, days).numpy()  # (11, 9, 40, 40)
    pca = PCA(9).fit(x.permute(0, 1, 3, 4, 2).reshape(-1, cfg.n_bands).numpy())  # every pixel's spectrum
    ref = pca.transform(scene.permute(0, 2, 3, 1).reshape(-1, cfg.n_bands).numpy()).reshape(11, 40, 40, 9)
    ref = ref.transpose(0, 3, 1, 2)
    pixel_ref = ref.copy()
    ref[:, 6:] = uniform_filter(ref[:, 6:], size=(1, 1, 3, 3), mode="nearest")
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the NaN-padded border
    got, want = z[inner].transpose(0, 2, 3, 1).reshape(-1, 9), ref[inner].transpose(0, 2, 3, 1).reshape(-1, 9)

    def residual(target, inputs):  # relative least-squares residual of target on [inputs, 1]
        design = np.c_[inputs, np.ones(len(inputs))]
        fit = design @ np.linalg.lstsq(design, target, rcond=None)[0]
        return float(np.linalg.norm(fit - target) / np.linalg.norm(target - target.mean(0)))

    # the first 6 dims span the pixel's top-6 PCA codes, the last 3 their neighbourhood means of PCs 7-9
    assert residual(got[:, :6], want[:, :6]) < 1e-3 and residual(want[:, :6], got[:, :6]) < 1e-3
    assert residual(got[:, 6:], want[:, 6:]) < 0.05 and residual(want[:, 6:], got[:, 6:]) < 0.05  # float32, tiny PC 9
    assert residual(got[:, 6:], ref[inner][:, :6].transpose(0, 2, 3, 1).reshape(-1, 6)) > 0.5
    # context_share 0.5: those dims half the pixel's own code, half its neighbourhood mean
    pca_warm_start(model, x, weights, centre_boost=400.0, context_dims=3, context_px=3, context_share=0.5)
    with torch.no_grad():
        zh = model.encode_scene(scene, days).numpy()
    half = 0.5 * pixel_ref[:, 6:] + 0.5 * ref[:, 6:]
    got_h = zh[inner].transpose(0, 2, 3, 1).reshape(-1, 9)
    want_h = half[inner].transpose(0, 2, 3, 1).reshape(-1, 3)
    assert residual(got_h[:, 6:], want_h) < 0.05 and residual(want_h, got_h[:, 6:]) < 0.05
    assert residual(got_h[:, 6:], want[:, 6:]) > 0.1  # ... not the neighbourhood mean alone
    with pytest.raises(ValueError, match=r"context_share must be in \(0, 1\], got 0"):
        pca_warm_start(model, x, weights, context_dims=2, context_share=0)
    with pytest.raises(ValueError, match="context_dims must be in 1..8"):
        pca_warm_start(model, x, weights, context_dims=9)
    with pytest.raises(ValueError, match="context_px odd"):
        pca_warm_start(model, x, weights, context_dims=2, context_px=4)


@pytest.mark.slow
def test_fusion_warm_start_with_context_reads_the_neighbourhood_codes_in_its_last_dims():
    from latentcube.nn import FusionConfig, FusionModel
    from latentcube.nn.linear_init import fusion_warm_start

    weights, s1, s2 = _weights_and_small_sensor_models()
    g = torch.Generator().manual_seed(4)
    # every pixel its own mix of a few spectra: the neighbourhood holds what the centre pixel does not
    x1 = 0.5 + torch.einsum("ntkhw,kc->ntchw", torch.randn(120, 11, 2, 15, 15, generator=g), torch.randn(2, 2, generator=g) * 0.1)
    x2 = 0.3 + torch.einsum("ntkhw,kc->ntchw", torch.randn(120, 11, 4, 15, 15, generator=g), torch.randn(4, 10, generator=g) * 0.1)
    days = torch.arange(11.0).repeat(120, 1) * 5
    pca_warm_start(s1, x1, weights)
    pca_warm_start(s2, x2, weights)
    x = {"s1": x1, "s2": x2}
    with pytest.raises(ValueError, match="d_model >= 4 token parts x proj_dim = 64"):
        fusion_warm_start(FusionModel({"s1": s1, "s2": s2}, FusionConfig(context_px=5, context_dims=2)).freeze_sensor_models(),
                          x, days, {"s1": weights, "s2": weights})
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig(context_px=5, context_dims=2, d_model=64))
    fused = fused.freeze_sensor_models().eval()
    fusion_warm_start(fused, x, days, {"s1": weights, "s2": weights})
    with torch.no_grad():
        z = fused.encode_patches(x, days).reshape(-1, 7).double()
        lat = torch.cat(list(fused.sensor_latents(x, days).values()), -1).reshape(-1, 11).double()
        ctx = torch.cat(list(fused.context_codes(x).values()), -1).reshape(-1, 11).double()

    def residual(target, inputs):  # relative least-squares residual of target on [inputs, 1]
        design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        fit = design @ (torch.linalg.pinv(design) @ target)  # pinv: latents may have unused (zero) dims
        return float((fit - target).norm() / target.norm())

    # the first 5 dims: a linear code of the pixel's own latents; the last 2: of the neighbourhood codes only
    assert residual(z[:, :5], lat) < 1e-4 and residual(z[:, 5:], ctx) < 1e-4
    assert residual(z[:, 5:], lat) > 1e-2  # ... which the pixel's latents do not hold
    # ... and they are the plain fused code's weakest directions: same coefficients, on the neighbourhood codes
    plain = FusionModel({"s1": s1, "s2": s2}, FusionConfig(d_model=64)).freeze_sensor_models().eval()
    fusion_warm_start(plain, x, days, {"s1": weights, "s2": weights})
    with torch.no_grad():
        z0 = plain.encode_patches(x, days).reshape(-1, 7).double()

    def coefficients(target, inputs):
        design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        return (torch.linalg.pinv(design) @ target)[:-1]

    torch.testing.assert_close(z[:, :5], z0[:, :5], atol=1e-4, rtol=0)
    torch.testing.assert_close(coefficients(z[:, 5:], ctx), coefficients(z0[:, 5:], lat), atol=1e-3, rtol=1e-3)

    # context_share 0.5: those directions read half from the pixel, half from its neighbourhood
    half = FusionModel({"s1": s1, "s2": s2}, FusionConfig(context_px=5, context_dims=2, context_share=0.5, d_model=64))
    half = half.freeze_sensor_models().eval()
    fusion_warm_start(half, x, days, {"s1": weights, "s2": weights})
    with torch.no_grad():
        zh = half.encode_patches(x, days).reshape(-1, 7).double()
    torch.testing.assert_close(zh[:, :5], z0[:, :5], atol=1e-4, rtol=0)
    torch.testing.assert_close(zh[:, 5:], 0.5 * z0[:, 5:] + 0.5 * z[:, 5:], atol=1e-4, rtol=0)
