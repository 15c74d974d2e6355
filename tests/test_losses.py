"""Tests for latentcube.losses: golden values, independent references (scikit-image, torchmetrics,
scipy, numpy loops), masking invariance and gradient safety."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure

from latentcube.losses import (
    ContextWeightConfig,
    FusionLoss,
    FusionLossConfig,
    S1PretrainConfig,
    S1PretrainLoss,
    S2PretrainConfig,
    S2PretrainLoss,
    SensorLossConfig,
    center_mae,
    context_mae,
    context_weights,
    masked_ssim,
    spectral_angle,
    weighted_mae,
)

NAN = float("nan")
FAST = settings(max_examples=25, deadline=None)


def _patch(seed: int, B=2, T=11, C=4, H=15, W=15) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, C, H, W, generator=g)


# ------------------------------------------------------------------------------------- weights


def test_context_weights_golden_values():
    w = context_weights(11, 15, 15)
    assert w.shape == (11, 15, 15) and w.dtype == torch.float32
    assert w[5, 7, 7] == pytest.approx(1.0)
    assert w[5, 7, 8] == pytest.approx(math.exp(-1))  # d_s = 1, d_t = 0
    assert w[5, 8, 8] == pytest.approx(math.exp(-math.sqrt(2)))  # diagonal, d_s = sqrt(2)
    assert w[3, 7, 7] == pytest.approx(math.exp(-2))  # d_t = 2
    assert w[0, 0, 0] == pytest.approx(math.exp(-math.sqrt(98) - 5), rel=1e-5)  # corner, first date
    w2 = context_weights(11, 15, 15, alpha_s=0.5, alpha_t=2.0)
    assert w2[6, 9, 7] == pytest.approx(math.exp(-0.5 * 2 - 2.0 * 1))


def test_center_weight_multiplies_only_the_centre():
    base = context_weights(5, 7, 9)
    w = context_weights(5, 7, 9, center_weight=1.75)
    ratio = w / base
    assert ratio[2, 3, 4] == pytest.approx(1.75)
    ratio[2, 3, 4] = 1.0
    torch.testing.assert_close(ratio, torch.ones_like(ratio))


def test_context_weights_days():
    # Sample 0: dates at day 0, 5, 10, 20, 22; centre date (index 2) is day 10; revisit 5 days,
    # so d_t = |day - 10| / 5 = 2, 1, 0, 2, 2.4.
    days = torch.tensor([[0.0, 5, 10, 20, 22], [0, 1, 2, 3, 4]])
    w = context_weights(5, 3, 3, days=days, revisit_days=5.0)
    assert w.shape == (2, 5, 3, 3)
    expect = torch.exp(-torch.tensor([2.0, 1, 0, 2, 2.4]))
    torch.testing.assert_close(w[0, :, 1, 1], expect)
    torch.testing.assert_close(w[1, :, 1, 1], torch.exp(-torch.tensor([2.0, 1, 0, 1, 2]) / 5))
    assert w[0, 2, 0, 1] == pytest.approx(math.exp(-1))
    with pytest.raises(ValueError, match="revisit_days"):
        context_weights(5, 3, 3, days=days)
    with pytest.raises(ValueError, match=r"\(B, T=4\)"):
        context_weights(4, 3, 3, days=days, revisit_days=5.0)


def test_authors_weighting_golden_values():
    # Authors' code: spatial 1 at centre, 0.01 * 0.1^(r-1) on Chebyshev ring r; temporal 0.1^|dt|.
    w = context_weights(11, 15, 15, weighting="authors", center_weight=1.5)
    assert w[5, 7, 7] == pytest.approx(1.5)
    assert w[5, 6, 8] == pytest.approx(0.01)  # diagonal neighbour is ring 1
    assert w[4, 9, 7] == pytest.approx(0.01 * 0.1 * 0.1)  # ring 2, dt = 1
    assert w[5, 7, 0] == pytest.approx(0.01 * 0.1**6)  # ring 7
    assert w[0, 7, 7] == pytest.approx(0.1**5)
    with pytest.raises(ValueError, match="weighting"):
        context_weights(3, 3, 3, weighting="gauss")


# --------------------------------------------------------------------------------- weighted MAE


def test_weighted_mae_hand_computed():
    # B=1, T=1, C=2, H=1, W=3; weights (1, 2, 1).
    # Band 0: |err| = (1, 2, 3) -> (1*1 + 2*2 + 1*3) / 4 = 2.
    # Band 1: |err| = (6, -, 0), middle target invalid -> (1*6 + 1*0) / (1 + 1) = 3.
    # Mean over bands = (2 + 3) / 2 = 2.5.
    pred = torch.tensor([[[[[1.0, 2.0, 3.0]], [[6.0, 5.0, 1.0]]]]])
    target = torch.tensor([[[[[0.0, 0.0, 0.0]], [[0.0, NAN, 1.0]]]]])
    w = torch.tensor([[[1.0, 2.0, 1.0]]])
    assert weighted_mae(pred, target, w).item() == pytest.approx(2.5)


def test_weighted_mae_band_without_valid_is_excluded():
    pred = torch.ones(1, 1, 2, 1, 2)
    target = torch.tensor([[[[[0.5, 0.5]], [[NAN, NAN]]]]])
    assert weighted_mae(pred, target, torch.ones(1, 1, 2)).item() == pytest.approx(0.5)


def test_nothing_valid_gives_zero_and_zero_gradient():
    pred = torch.rand(2, 3, 2, 7, 7, requires_grad=True)
    target = torch.full_like(pred, NAN)
    for loss in (S2PretrainLoss()(pred, target), S1PretrainLoss()(pred, target)):
        assert loss.total.item() == 0.0
        (g,) = torch.autograd.grad(loss.total, pred)
        assert torch.count_nonzero(g) == 0
        assert all(torch.isfinite(v) for v in loss.parts.values())


@FAST
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 3), T=st.integers(1, 5), C=st.integers(1, 4),
       H=st.integers(1, 6), W=st.integers(1, 6), frac=st.floats(0.0, 0.7), c=st.floats(0.1, 10.0))
def test_uniform_weights_equal_plain_mae(seed, B, T, C, H, W, frac, c):
    rng = np.random.default_rng(seed)
    pred = rng.random((B, T, C, H, W)).astype(np.float32)
    target = rng.random((B, T, C, H, W)).astype(np.float32)
    target[rng.random(target.shape) < frac] = np.nan
    # numpy reference: plain MAE per (sample, band) over valid elements, then mean over those pairs
    err = np.abs(pred - target).transpose(0, 2, 1, 3, 4).reshape(B, C, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs -> NaN, excluded below
        per_pair = np.nanmean(err, axis=-1)
    ref = 0.0 if np.isnan(per_pair).all() else float(np.nanmean(per_pair))
    got = weighted_mae(torch.from_numpy(pred), torch.from_numpy(target), torch.full((T, H, W), c))
    assert got.item() == pytest.approx(ref, abs=1e-6)


def test_center_and_context_mae():
    pred = torch.zeros(1, 3, 2, 3, 3)
    target = torch.zeros(1, 3, 2, 3, 3)
    target[0, 1, 0, 1, 1] = 0.4  # centre, band 0
    target[0, 1, 1, 1, 1] = NAN  # centre, band 1 invalid -> centre MAE = 0.4
    target[0, 1, 0, 1, 2] = 1.0  # context element at d_s = 1, d_t = 0, weight e^-1
    assert center_mae(pred, target).item() == pytest.approx(0.4)
    w = context_weights(3, 3, 3)
    ctx_w = w.clone()
    ctx_w[1, 1, 1] = 0
    # band 0: 1.0 * e^-1 / sum(context weights); band 1: no error at all -> 0; mean over bands
    expect = 0.5 * math.exp(-1) / ctx_w.sum().item()
    assert context_mae(pred, target, w).item() == pytest.approx(expect, rel=1e-5)


def test_weighted_mae_rejects_bad_weights():
    with pytest.raises(ValueError, match="do not match"):
        weighted_mae(torch.zeros(1, 2, 1, 3, 3), torch.zeros(1, 2, 1, 3, 3), torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        weighted_mae(torch.zeros(1, 2, 1, 3, 3), torch.zeros(1, 2, 1, 3, 4), torch.ones(2, 3, 3))


# ------------------------------------------------------------------------------------------ SSIM


def _ssim_ref_numpy(x, y, taps, sigma=1.5, c1=1e-4, c2=9e-4, crop=None):
    """scikit-image's formula with a ``taps``-wide Gaussian, cropping ``crop`` (default: the radius,
    i.e. the valid region), via scipy in float64."""
    r = (taps - 1) // 2
    crop = r if crop is None else crop
    f = lambda a: gaussian_filter(a, sigma, truncate=r / sigma, mode="reflect")  # noqa: E731
    ux, uy = f(x), f(y)
    vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s[crop:-crop, crop:-crop].mean()


def _pairs(seed, n=3, size=15):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.random((size, size))
        y = np.clip(x + 0.15 * rng.standard_normal((size, size)), 0, 1)
        yield x, y


def test_ssim_matches_skimage_win11():
    # skimage filters with an 11-tap Gaussian (truncate 3.5 at sigma 1.5) whatever win_size is and
    # crops (win_size - 1) // 2; at win_size = 11 that crop is exactly the valid-convolution region.
    for x, y in _pairs(0):
        ref = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, win_size=11,
                                    use_sample_covariance=False, data_range=1.0)
        got = masked_ssim(torch.tensor(x)[None], torch.tensor(y)[None], win_size=11)
        assert got.item() == pytest.approx(ref, abs=1e-4)


def test_ssim_win7_matches_scipy_reference_and_differs_from_skimage_win7():
    for x, y in _pairs(1):
        got = masked_ssim(torch.tensor(x)[None], torch.tensor(y)[None], win_size=7).item()
        assert got == pytest.approx(_ssim_ref_numpy(x, y, 7), abs=1e-5)
        # Documented deviation: skimage(win_size=7, gaussian_weights=True) still filters with 11 taps
        # (reflect-padded) and only crops 3 pixels, so it is not a 7-tap SSIM; it differs by ~1e-3.
        sk = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, win_size=7,
                                   use_sample_covariance=False, data_range=1.0)
        assert sk == pytest.approx(_ssim_ref_numpy(x, y, 11, crop=3), abs=1e-12)
        assert 0 < abs(got - sk) < 5e-3


def test_ssim_matches_torchmetrics_on_reflect_padded_images():
    # torchmetrics: 11-tap Gaussian on a reflect-padded image, map averaged without crop. Same as our
    # valid 11-tap convolution on images reflect-padded by 5.
    x = torch.rand(4, 1, 15, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = (x + 0.2 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    ref = structural_similarity_index_measure(y, x, gaussian_kernel=True, sigma=1.5, data_range=1.0)
    pad = lambda a: torch.nn.functional.pad(a, (5, 5, 5, 5), mode="reflect")  # noqa: E731
    got = masked_ssim(pad(y), pad(x), win_size=11)
    assert got.item() == pytest.approx(ref.item(), abs=1e-4)


def test_ssim_identity_and_loss_zero():
    x = _patch(5, C=3)
    x[0, 2, 1, 4:9, 4:9] = NAN
    assert masked_ssim(x.nan_to_num(0.3), x).item() == pytest.approx(1.0, abs=1e-5)
    out = S2PretrainLoss()(x.nan_to_num(0.3), x)
    assert out.parts["ssim_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert out.parts["weighted_mae"].item() == 0.0


def test_ssim_stays_float32_under_bf16_autocast():
    """Lightning's bf16-mixed runs the loss under autocast; SSIM's local variances are differences of
    second moments that bf16 products would swamp."""
    gen = torch.Generator().manual_seed(0)
    level = torch.rand(4, 11, 10, 1, 1, generator=gen) * 0.3
    target = level + 0.01 * torch.randn(4, 11, 10, 15, 15, generator=gen)
    pred = target + 0.005 * torch.randn(target.shape, generator=gen)
    reference = masked_ssim(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = masked_ssim(pred, target)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), abs=1e-6)
    assert 0.9 < reference.item() < 0.999  # structure is neither identical nor lost


def _masked_ssim_loop(x, y, valid, taps=7, sigma=1.5, min_frac=0.5, c1=1e-4, c2=9e-4):
    """Independent numpy loop over windows: weights renormalised over valid pixels."""
    g = np.exp(-((np.arange(taps) - taps // 2) ** 2) / (2 * sigma**2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(x.shape[0] - taps + 1):
        for j in range(x.shape[1] - taps + 1):
            kw = k * valid[i:i + taps, j:j + taps]
            if kw.sum() < min_frac:
                continue
            kw = kw / kw.sum()
            a, b = x[i:i + taps, j:j + taps], y[i:i + taps, j:j + taps]
            a, b = np.where(kw > 0, a, 0), np.where(kw > 0, b, 0)
            ua, ub = (kw * a).sum(), (kw * b).sum()
            va, vb = (kw * (a - ua) ** 2).sum(), (kw * (b - ub) ** 2).sum()
            cab = (kw * (a - ua) * (b - ub)).sum()
            vals.append((2 * ua * ub + c1) * (2 * cab + c2) / ((ua**2 + ub**2 + c1) * (va + vb + c2)))
    return np.mean(vals), len(vals)


def test_masked_ssim_matches_loop_reference():
    rng = np.random.default_rng(7)
    x = rng.random((15, 15))
    y = np.clip(0.7 * x + 0.3 * rng.random((15, 15)), 0, 1)
    valid = rng.random((15, 15)) > 0.3
    valid[:6, :6] = False  # a hole large enough to exclude some windows entirely
    ref, n = _masked_ssim_loop(x, y, valid)
    assert 0 < n < 81  # some windows excluded, some kept
    yt = torch.tensor(np.where(valid, y, np.nan))
    got, smap = masked_ssim(torch.tensor(x)[None], yt[None], return_map=True)
    assert got.item() == pytest.approx(ref, abs=1e-5)
    assert int(torch.isfinite(smap).sum()) == n


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="exceeds the image extent"):
        masked_ssim(torch.zeros(1, 5, 5), torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        masked_ssim(torch.zeros(1, 9, 9), torch.zeros(1, 9, 9), win_size=4)


# ------------------------------------------------------------------------------------------- SAM


def _centre_spectra(p, t, T=3, H=3, W=3):
    pred = torch.zeros(len(p), T, len(p[0]), H, W)
    target = torch.zeros_like(pred)
    pred[:, T // 2, :, H // 2, W // 2] = torch.tensor(p, dtype=torch.float32)
    target[:, T // 2, :, H // 2, W // 2] = torch.tensor(t, dtype=torch.float32)
    return pred, target


def test_sam_known_angles():
    assert spectral_angle(*_centre_spectra([[1.0, 0.0]], [[0.0, 2.0]])).item() == pytest.approx(math.pi / 2)
    assert spectral_angle(*_centre_spectra([[1.0, 0.0]], [[3.0, 3.0]])).item() == pytest.approx(math.pi / 4)
    # 60 degrees: cos = 0.5
    assert spectral_angle(*_centre_spectra([[1.0, 0.0, 0.0]], [[0.5, math.sqrt(0.75), 0.0]])).item() == \
        pytest.approx(math.pi / 3, abs=1e-6)
    # mean of 90 and 45 degrees; a third spectrum with a NaN band is excluded
    p, t = _centre_spectra([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0], [NAN, 1.0]])
    assert spectral_angle(p, t).item() == pytest.approx(3 * math.pi / 8)


def test_sam_identical_and_zero_vectors_are_safe():
    p, t = _centre_spectra([[0.2, 0.4, 0.1]], [[0.2, 0.4, 0.1]])
    p.requires_grad_(True)
    a = spectral_angle(p, t)
    assert a.item() < 1e-3
    (g,) = torch.autograd.grad(a, p)
    assert torch.isfinite(g).all()
    z, t = _centre_spectra([[0.0, 0.0, 0.0]], [[0.2, 0.4, 0.1]])
    z.requires_grad_(True)
    a = spectral_angle(z, t)
    assert a.item() == pytest.approx(math.pi / 2)
    (g,) = torch.autograd.grad(a, z)
    assert torch.isfinite(g).all()


@FAST
@given(seed=st.integers(0, 2**31 - 1), s1=st.floats(0.01, 100.0), s2=st.floats(0.01, 100.0),
       C=st.integers(2, 12))
def test_sam_scale_invariant(seed, s1, s2, C):
    rng = np.random.default_rng(seed)
    p, t = (rng.random((3, C)) + 0.05).tolist(), (rng.random((3, C)) + 0.05).tolist()
    pred, target = _centre_spectra(p, t)
    ref = spectral_angle(pred, target).item()
    assert spectral_angle(pred * s1, target * s2).item() == pytest.approx(ref, abs=2e-4)


def test_sam_all_dates():
    pred = torch.zeros(1, 3, 2, 3, 3)
    target = torch.zeros_like(pred)
    pred[0, :, 0, 1, 1] = 1.0
    target[0, 0, :, 1, 1] = torch.tensor([1.0, 1.0])  # 45 deg
    target[0, 1, :, 1, 1] = torch.tensor([1.0, 0.0])  # 0 deg (clamped: ~5e-4)
    target[0, 2, :, 1, 1] = torch.tensor([0.0, 1.0])  # 90 deg
    got = spectral_angle(pred, target, dates="all").item()
    assert got == pytest.approx((math.pi / 4 + math.pi / 2) / 3, abs=1e-3)
    with pytest.raises(ValueError, match="dates"):
        spectral_angle(pred, target, dates="some")


# -------------------------------------------------------------------------- masking and gradients


def _loss_and_grad(loss_fn, pred, target):
    pred = pred.clone().requires_grad_(True)
    out = loss_fn(pred, target)
    (g,) = torch.autograd.grad(out.total, pred)
    return out, g


@pytest.mark.parametrize("loss_fn", [S2PretrainLoss(), S1PretrainLoss()])
def test_invalid_targets_change_nothing(loss_fn):
    pred, target = _patch(10), _patch(11)
    invalid = torch.rand(target.shape, generator=torch.Generator().manual_seed(12)) < 0.3
    invalid[0, 5, :, 7, 7] = False
    invalid[0, 5, 1, 7, 7] = True  # centre spectrum of sample 0 invalid (one band)
    invalid[1, :, :, :8, :8] = True  # a hole that removes SSIM windows
    t1 = target.masked_fill(invalid, NAN)
    t2 = target.masked_fill(invalid, float("inf"))
    pred2 = torch.where(invalid, pred + 5 * torch.rand_like(pred), pred)
    o1, g1 = _loss_and_grad(loss_fn, pred, t1)
    o2, g2 = _loss_and_grad(loss_fn, pred2, t2)
    assert torch.isfinite(o1.total) and torch.isfinite(g1).all()
    torch.testing.assert_close(o1.total, o2.total)
    torch.testing.assert_close(g1, g2)
    assert torch.count_nonzero(g1[invalid]) == 0
    assert torch.count_nonzero(g1[~invalid]) > 0  # gradients flow to the prediction
    for k in o1.parts:
        torch.testing.assert_close(o1.parts[k], o2.parts[k])


def test_s2_loss_combines_parts_with_default_lambdas():
    pred, target = _patch(20, C=10), _patch(21, C=10)
    out = S2PretrainLoss()(pred, target)
    p = out.parts
    expect = 0.23 * p["weighted_mae"] + 0.03 * p["ssim_loss"] + 0.74 * p["sam_rad"]
    assert out.total.item() == pytest.approx(expect.item(), rel=1e-6)
    assert p["sam_deg"].item() == pytest.approx(math.degrees(p["sam_rad"].item()), rel=1e-6)
    assert not any(v.requires_grad for v in p.values())
    assert p["center_mae"].item() == pytest.approx(
        (pred[:, 5, :, 7, 7] - target[:, 5, :, 7, 7]).abs().mean().item(), rel=1e-6)


def test_days_mode_in_config():
    cfg = S1PretrainConfig(weights=ContextWeightConfig(time_distance="days", revisit_days=5.0))
    pred, target = _patch(30, B=1, T=3, C=1, H=1, W=1), _patch(31, B=1, T=3, C=1, H=1, W=1)
    days = torch.tensor([[0.0, 10.0, 15.0]])  # d_t = 2, 0, 1 -> w = e^-2, 1, e^-1
    w = torch.exp(-torch.tensor([2.0, 0.0, 1.0]))
    err = (pred - target).abs().flatten()
    assert S1PretrainLoss(cfg)(pred, target, days).total.item() == pytest.approx(
        ((w * err).sum() / w.sum()).item(), rel=1e-6)
    with pytest.raises(ValueError, match="day offsets"):
        S1PretrainLoss(cfg)(pred, target)


@pytest.mark.parametrize("shape", [(1, 1, 1, 7, 7), (3, 4, 3, 9, 8), (2, 6, 13, 16, 15)])
def test_other_shapes_and_bfloat16(shape):
    pred, target = _patch(40, *shape), _patch(41, *shape)
    ref = S2PretrainLoss()(pred, target).total
    pb = pred.to(torch.bfloat16).requires_grad_(True)
    out = S2PretrainLoss()(pb, target.to(torch.bfloat16))
    assert out.total.dtype == torch.float32
    assert out.total.item() == pytest.approx(ref.item(), rel=3e-2)
    out.total.backward()
    assert pb.grad.dtype == torch.bfloat16 and torch.isfinite(pb.grad.float()).all()


# ---------------------------------------------------------------------------------------- fusion


def test_fusion_default_matches_paper_terms():
    pred, target = _patch(50, C=12), _patch(51, C=12)
    target[0, 3, 4, 2:5, 2:5] = NAN
    P = {"s1": pred[:, :, :2], "s2": pred[:, :, 2:]}
    Tg = {"s1": target[:, :, :2], "s2": target[:, :, 2:]}
    out = FusionLoss()(P, Tg)
    w1 = context_weights(11, 15, 15, center_weight=1.5)
    w2 = context_weights(11, 15, 15, center_weight=1.75)
    l1 = weighted_mae(P["s1"], Tg["s1"], w1)
    l2 = weighted_mae(P["s2"], Tg["s2"], w2) + spectral_angle(P["s2"], Tg["s2"])
    joint = (1 - masked_ssim(pred, target)) + spectral_angle(pred, target)
    assert out.total.item() == pytest.approx((l1 + l2 + joint).item(), rel=1e-6)
    assert out.parts["s1/total"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert "s1/sam_rad" not in out.parts and "s2/sam_rad" in out.parts


@pytest.mark.parametrize("weights", [{"s1": -0.1, "s2": 1.0}, {"s1": 0.0, "s2": 0.0}, {"s1": float("nan"), "s2": 1.0}])
def test_fusion_rejects_bad_sensor_weights(weights):
    sensors = {n: SensorLossConfig(weight=w) for n, w in weights.items()}
    with pytest.raises(ValueError, match=r"sensor weights must be >= 0 with at least one > 0.*s1"):
        FusionLoss(FusionLossConfig(sensors=sensors))


def test_fusion_three_sensors_and_gradients():
    sensors = {
        "s1": SensorLossConfig(weights=ContextWeightConfig(center_weight=1.5)),
        "s2": SensorLossConfig(weights=ContextWeightConfig(center_weight=1.75), use_sam=True),
        "lst": SensorLossConfig(weights=ContextWeightConfig(alpha_s=0.5), weight=0.5, mae_weight=2.0),
    }
    loss = FusionLoss(FusionLossConfig(sensors=sensors, joint_weight=0.3))
    chans = {"s1": 2, "s2": 10, "lst": 1}
    P = {k: _patch(60 + i, C=c, T=5, H=9, W=9).requires_grad_(True) for i, (k, c) in enumerate(chans.items())}
    Tg = {k: _patch(70 + i, C=c, T=5, H=9, W=9) for i, (k, c) in enumerate(chans.items())}
    out = loss(P, Tg)
    lst = 0.5 * 2.0 * weighted_mae(P["lst"], Tg["lst"], context_weights(5, 9, 9, alpha_s=0.5))
    assert out.parts["lst/total"].item() == pytest.approx(2.0 * weighted_mae(
        P["lst"], Tg["lst"], context_weights(5, 9, 9, alpha_s=0.5)).item(), rel=1e-6)
    joint_cat = torch.cat([P["s1"], P["s2"], P["lst"]], dim=2)
    tgt_cat = torch.cat([Tg["s1"], Tg["s2"], Tg["lst"]], dim=2)
    joint = (1 - masked_ssim(joint_cat, tgt_cat)) + spectral_angle(joint_cat, tgt_cat)
    assert out.parts["joint/total"].item() == pytest.approx(joint.item(), rel=1e-6)
    rest = out.parts["s1/total"] + out.parts["s2/total"]
    assert out.total.item() == pytest.approx((rest + lst + 0.3 * joint).item(), rel=1e-5)
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in P.values())
    with pytest.raises(ValueError, match=r"lacks sensor\(s\) \['lst'\]"):
        loss({"s1": P["s1"], "s2": P["s2"]}, Tg)
    with pytest.raises(ValueError, match="share"):
        loss({**P, "lst": _patch(0, T=5, C=1, H=8, W=9)}, {**Tg, "lst": _patch(1, T=5, C=1, H=8, W=9)})


def test_fusion_per_sensor_days():
    cfg = FusionLossConfig(sensors={
        "a": SensorLossConfig(weights=ContextWeightConfig(time_distance="days")),
        "b": SensorLossConfig(),
    })
    P = {"a": _patch(80, T=3, C=1, H=7, W=7), "b": _patch(81, T=3, C=1, H=7, W=7)}
    Tg = {"a": _patch(82, T=3, C=1, H=7, W=7), "b": _patch(83, T=3, C=1, H=7, W=7)}
    days = torch.tensor([[0.0, 5.0, 20.0], [0.0, 5.0, 10.0]])
    out = FusionLoss(cfg)(P, Tg, days={"a": days})
    w = context_weights(3, 7, 7, days=days, revisit_days=5.0)
    assert out.parts["a/weighted_mae"].item() == pytest.approx(weighted_mae(P["a"], Tg["a"], w).item(), rel=1e-6)


def test_s2_config_lambdas_authors_weighting_and_all_dates():
    cfg = S2PretrainConfig(weights=ContextWeightConfig(weighting="authors"), lambda_mae=2.0,
                           lambda_ssim=0.0, lambda_sam=0.5, sam_dates="all")
    pred, target = _patch(90, T=5, C=3, H=9, W=9), _patch(91, T=5, C=3, H=9, W=9)
    out = S2PretrainLoss(cfg)(pred, target)
    w = context_weights(5, 9, 9, weighting="authors")
    expect = 2.0 * weighted_mae(pred, target, w) + 0.5 * spectral_angle(pred, target, dates="all")
    assert out.total.item() == pytest.approx(expect.item(), rel=1e-6)
    # SAM over all dates differs from the centre-date SAM on random data
    assert out.parts["sam_rad"].item() != pytest.approx(spectral_angle(pred, target).item(), rel=1e-3)


@FAST
@given(seed=st.integers(0, 2**31 - 1), frac=st.floats(0.0, 1.0), T=st.integers(1, 4),
       H=st.integers(7, 10), W=st.integers(7, 10))
def test_nan_targets_never_give_nan(seed, frac, T, H, W):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, T, 3, H, W, generator=g).requires_grad_(True)
    target = torch.rand(2, T, 3, H, W, generator=g)
    target[torch.rand(target.shape, generator=g) < frac] = NAN
    for loss_fn in (S2PretrainLoss(), S1PretrainLoss()):
        out = loss_fn(pred, target)
        (grad,) = torch.autograd.grad(out.total, pred)
        assert torch.isfinite(out.total) and torch.isfinite(grad).all()
        assert all(torch.isfinite(v) for v in out.parts.values())
        assert torch.count_nonzero(grad[~torch.isfinite(target)]) == 0
    fused = FusionLoss()({"s1": pred[:, :, :1], "s2": pred[:, :, 1:]}, {"s1": target[:, :, :1], "s2": target[:, :, 1:]})
    (grad,) = torch.autograd.grad(fused.total, pred)
    assert torch.isfinite(fused.total) and torch.isfinite(grad).all()
