"""Tests for latentcube.nn: dense-exact encoding, receptive field, time encoding, gradients, fusion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from latentcube.nn import (
    AutoencoderConfig,
    FusionConfig,
    FusionModel,
    SensorAutoencoder,
    model_info,
    s1_config,
    s2_config,
    window_indices,
    window_starts,
)

TOL = 1e-5
N_DATES, P, C_T, R = 11, 15, 5, 7  # window length, patch size, centre date index, patch radius


def _seed(s: int = 0) -> torch.Generator:
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def _scene(gen, t: int, c: int, h: int, w: int, nan_fraction: float = 0.15) -> torch.Tensor:
    """Random scene with scattered NaNs, a fully invalid date and a band missing over a block."""
    x = torch.randn(t, c, h, w, generator=gen)
    x[torch.rand(x.shape, generator=gen) < nan_fraction] = float("nan")
    x[2] = float("nan")  # a whole date invalid
    x[4:6, 0, : h // 2, : w // 3] = float("nan")  # one band missing over a block
    return x


def _days(gen, t: int) -> torch.Tensor:
    """Irregular acquisition days (gaps 1..40 d) with an arbitrary origin."""
    return 7300.0 + torch.cumsum(1 + 39 * torch.rand(t, generator=gen), 0)


def _start(t: int, n_total: int) -> int:
    # Written independently of the implementation: t-5 .. t+5 shifted to stay inside the series.
    return min(max(t - N_DATES // 2, 0), n_total - N_DATES)


def _patches(x: torch.Tensor, t: int, pixels: list[tuple[int, int]]) -> torch.Tensor:
    """Patches (B, 11, C, 15, 15) of the window of date t around pixels; outside the scene is NaN."""
    s = _start(t, x.shape[0])
    xp = F.pad(x, (R, R, R, R), value=float("nan"))
    return torch.stack([xp[s : s + N_DATES, :, y : y + P, x_ : x_ + P] for y, x_ in pixels])


def _pixels(h: int, w: int) -> list[tuple[int, int]]:
    return [(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2), (3, 1), (h - 2, w // 3), (R, R)]


def _small(cfg: AutoencoderConfig) -> AutoencoderConfig:
    # Narrower than the presets to keep the test file fast; geometry (15 x 15 x 11) unchanged.
    return dataclasses.replace(cfg, decoder_d_model=16, decoder_ffn_dim=32, decoder_widths=(16, 8, 8),
                               decoder_branch_ch=4, linear_patch=True)


def _with_linear_code(model: SensorAutoencoder) -> SensorAutoencoder:
    """Give the (zero-initialised) linear patch path random weights and centres so equivalence tests see it."""
    with torch.no_grad():
        model.encoder.patch_linear.weight.normal_(0.0, 0.05)
        model.encoder.patch_centre.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def s1_model() -> SensorAutoencoder:
    _seed(1)
    return _with_linear_code(SensorAutoencoder(_small(s1_config()))).eval()


@pytest.fixture(scope="module")
def s2_model() -> SensorAutoencoder:
    _seed(2)
    return _with_linear_code(SensorAutoencoder(_small(s2_config()))).eval()


@pytest.fixture(scope="module")
def fused(s1_model, s2_model) -> FusionModel:
    _seed(3)
    return FusionModel({"s1": s1_model, "s2": s2_model}, FusionConfig()).freeze_sensor_models().eval()


@pytest.fixture(scope="module")
def fused_context(s1_model, s2_model) -> FusionModel:
    """Fusion layers that also read each sensor's 5 x 5 neighbourhood-mean linear code (random weights)."""
    _seed(4)
    model = FusionModel({"s1": s1_model, "s2": s2_model}, FusionConfig(context_px=5, context_dims=2, d_model=64))
    return model.freeze_sensor_models().eval()


# ---------------------------------------------------------------------------------------------- config


def test_presets_follow_the_paper():
    s1, s2 = s1_config(), s2_config()
    assert (s1.n_bands, s1.latent_dim, s1.band_names) == (2, 2, ("VV", "VH"))
    assert (s2.n_bands, s2.latent_dim, len(s2.band_names)) == (10, 9, 10)
    for c in (s1, s2):
        assert (c.patch_size, c.n_dates, c.centre_index, c.centre_pixel, c.receptive_field) == (15, 11, 5, (7, 7), 15)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s1.latent_dim = 3  # type: ignore[misc]


def test_config_rejects_inconsistent_receptive_field():
    with pytest.raises(ValueError, match="receptive field.*17.*patch_size is 15"):
        s2_config(conv_kernels=(5, 5))
    with pytest.raises(ValueError, match="odd"):
        s2_config(ca_pools=(2, 1, 1))
    with pytest.raises(ValueError, match="band_names"):
        s2_config(n_bands=4)
    with pytest.raises(ValueError, match=r"band_names \['B04', 'B03', 'B02', 'B08'\] must follow the cubes' band order: "
                                         r"use \['B02', 'B03', 'B04', 'B08'\]"):
        s2_config(n_bands=4, band_names=("B04", "B03", "B02", "B08"))
    with pytest.raises(ValueError, match=r"use \['VV', 'VH'\]"):
        s1_config(band_names=("VH", "VV"))
    assert s2_config(n_bands=4, band_names=("B02", "B03", "B04", "B08")).band_names == ("B02", "B03", "B04", "B08")
    # Another patch size works once the blocks are made consistent with it.
    cfg = s2_config(patch_size=9, multiscale_kernels=(1, 3), conv_kernels=(3, 3), sa_kernels=(3, 1, 1))
    assert cfg.receptive_field == 9
    model = SensorAutoencoder(dataclasses.replace(_small(cfg)))
    assert model.encode_patches(torch.randn(2, 11, 10, 9, 9), torch.arange(11.0).expand(2, 11)).shape == (2, 11, 9)


@given(n_total=st.integers(11, 60), t=st.integers(0, 59))
@settings(max_examples=50, deadline=None)
def test_window_convention(n_total, t):
    t = t % n_total
    win = window_indices(n_total, N_DATES)[t]
    assert win.tolist() == list(range(_start(t, n_total), _start(t, n_total) + N_DATES))
    assert t in win.tolist()
    if N_DATES // 2 <= t < n_total - N_DATES // 2:
        assert win[C_T] == t  # away from the ends the target is the centre date
    assert window_starts(n_total, N_DATES)[t] == win[0]


def test_bad_shapes_are_rejected(s1_model):
    with pytest.raises(ValueError, match="at least as many dates"):
        s1_model.encode_scene(torch.randn(10, 2, 4, 4), torch.arange(10.0))
    with pytest.raises(ValueError, match="expected patches"):
        s1_model.encode_patches(torch.randn(1, N_DATES, 3, P, P), torch.arange(11.0)[None])
    with pytest.raises(ValueError, match="expected a scene"):
        s1_model.encode_scene(torch.randn(12, 3, 4, 4), torch.arange(12.0))


# ------------------------------------------------------------------------------------ dense == patches


def _check_sensor_equivalence(model: SensorAutoencoder, seed: int, t_all: int = 16, h: int = 13, w: int = 11):
    gen = _seed(seed)
    x, days = _scene(gen, t_all, model.config.n_bands, h, w), _days(gen, t_all)
    with torch.no_grad():
        dense = model.encode_scene(x, days)
        assert dense.shape == (t_all, model.config.latent_dim, h, w) and dense.dtype == torch.float32
        assert torch.isfinite(dense).all()
        pixels = _pixels(h, w)
        for t in range(t_all):  # every date: centre dates and the shifted windows at both ends
            s = _start(t, t_all)
            z = model.encode_patches(_patches(x, t, pixels), days[s : s + N_DATES].expand(len(pixels), -1))
            ref = torch.stack([dense[t, :, y, x_] for y, x_ in pixels])
            err = (z[:, t - s] - ref).abs().max().item()
            assert err <= TOL, f"date {t}: max abs diff {err}"
            if s == t - C_T:
                assert torch.equal(z[:, C_T], z[:, t - s])


@pytest.mark.parametrize("which", ["s1", "s2"])
def test_scene_equals_patches_sensor(which, s1_model, s2_model):
    _check_sensor_equivalence(s1_model if which == "s1" else s2_model, seed=10 + len(which))


@pytest.mark.parametrize("which", ["fused", "fused_context"])
def test_scene_equals_patches_fused(which, request):
    fused = request.getfixturevalue(which)
    gen = _seed(20)
    t_all, h, w = 15, 12, 10
    x = {"s1": _scene(gen, t_all, 2, h, w), "s2": _scene(gen, t_all, 10, h, w)}
    days = _days(gen, t_all)
    with torch.no_grad():
        dense = fused.encode_scene(x, days)
        assert dense.shape == (t_all, 7, h, w) and torch.isfinite(dense).all()
        pixels = _pixels(h, w)
        for t in range(t_all):
            s = _start(t, t_all)
            z = fused.encode_patches({k: _patches(v, t, pixels) for k, v in x.items()},
                                     days[s : s + N_DATES].expand(len(pixels), -1))
            ref = torch.stack([dense[t, :, y, x_] for y, x_ in pixels])
            assert (z[:, t - s] - ref).abs().max().item() <= TOL, f"date {t}"


def test_tiled_scene_equals_untiled(s2_model, fused, fused_context):
    gen = _seed(21)
    x = {"s1": _scene(gen, 12, 2, 19, 17), "s2": _scene(gen, 12, 10, 19, 17)}
    days = _days(gen, 12)
    with torch.no_grad():
        a, b = s2_model.encode_scene(x["s2"], days, tile=None), s2_model.encode_scene(x["s2"], days, tile=8)
        c = s2_model.encode_scene(x["s2"], days, pixel_chunk=37)  # chunks not dividing the tile
        assert (a - b).abs().max() <= TOL and (a - c).abs().max() <= TOL
        for model in (fused, fused_context):
            a, b = model.encode_scene(x, days, tile=None), model.encode_scene(x, days, tile=10, pixel_chunk=29)
            assert (a - b).abs().max() <= TOL


def test_scene_region_equals_the_cropped_full_result(s2_model, fused):
    """``region`` embeds only those pixels (the rest of the scene is context): same values as cropping."""
    gen = _seed(22)
    x = {"s1": _scene(gen, 12, 2, 19, 17), "s2": _scene(gen, 12, 10, 19, 17)}
    days = _days(gen, 12)
    with torch.no_grad():
        full_s2, full_f = s2_model.encode_scene(x["s2"], days), fused.encode_scene(x, days)
        for ys, xs, tile in [(slice(3, 11), slice(5, 16), None), (slice(0, 19), slice(9, 17), 4), (slice(18, 19), slice(0, 1), 8)]:
            got = s2_model.encode_scene(x["s2"], days, region=(ys, xs), tile=tile)
            assert got.shape == (12, 9, ys.stop - ys.start, xs.stop - xs.start)
            assert (got - full_s2[:, :, ys, xs]).abs().max() <= TOL
            got = fused.encode_scene(x, days, region=(ys, xs), tile=tile, pixel_chunk=7)
            assert got.shape == (12, 7, ys.stop - ys.start, xs.stop - xs.start)
            assert (got - full_f[:, :, ys, xs]).abs().max() <= TOL
        with pytest.raises(ValueError, match="non-empty step-1"):
            s2_model.encode_scene(x["s2"], days, region=(slice(4, 4), slice(0, 3)))
        with pytest.raises(ValueError, match="non-empty step-1"):
            fused.encode_scene(x, days, region=(slice(0, 8, 2), slice(0, 3)))



def test_wanted_mask_skips_unwanted_windows_and_keeps_the_wanted_values(s2_model, fused, monkeypatch):
    """``encode_scene(wanted=...)``: the wanted pixel-dates equal the full result (per-patch equivalent by the
    tests above), the others are NaN, and the temporal layers skip the windows no pixel of a chunk wants."""
    from latentcube.nn.blocks import DayAttentionLayer

    gen = _seed(26)
    t_all, h, w = 30, 9, 8
    x = {"s1": _scene(gen, t_all, 2, h, w), "s2": _scene(gen, t_all, 10, h, w)}
    days = _days(gen, t_all)
    wanted = torch.rand(t_all, h, w, generator=gen) < 0.5
    wanted[[0, 3, 4, 5, 9, 17, 18, 19, 20, 29]] = False  # dates no pixel wants (cloudy dates), ends included
    wanted[21, : h // 2] = False  # a date the first chunks do not want, the later ones do
    calls: dict[str, list[int]] = {"windows": [], "queries": []}
    fap, fwin = DayAttentionLayer.forward_all_positions, DayAttentionLayer.forward_windows

    def count_fap(self, s, d, n, *, windows=None, **kw):
        calls["windows"].append(len(windows) if windows is not None else s.shape[0] - n + 1)
        return fap(self, s, d, n, windows=windows, **kw)

    def count_windows(self, s, d, windows, query_pos, **kw):
        calls["queries"].append(len(query_pos))
        return fwin(self, s, d, windows, query_pos, **kw)

    with torch.no_grad():
        full = {"s2": s2_model.encode_scene(x["s2"], days), "fused": fused.encode_scene(x, days)}
        monkeypatch.setattr(DayAttentionLayer, "forward_all_positions", count_fap)
        monkeypatch.setattr(DayAttentionLayer, "forward_windows", count_windows)
        got = {"s2": s2_model.encode_scene(x["s2"], days, wanted=wanted, pixel_chunk=36),
               "fused": fused.encode_scene(x, days, wanted=wanted, pixel_chunk=36)}
    keep = wanted[:, None]
    for name in ("s2", "fused"):
        a, b = got[name], full[name]
        assert a.shape == b.shape
        assert (a - b).abs()[keep.expand_as(a)].max() <= TOL, name
        assert torch.isnan(a[~keep.expand_as(a)]).all() and torch.isfinite(a[keep.expand_as(a)]).all(), name
    # 72 pixels in chunks of 36: the S2 encoder queries the dates some pixel of the chunk wants (date 21
    # only in the second chunk); the fusion computes their windows (distinct per date except at the
    # series' ends: dates 0..5 -> window 0, 24..29 -> window 19).
    chunks = (slice(0, 36), slice(36, 72))
    want_dates = [[t for t in range(t_all) if wanted[t].flatten()[c].any()] for c in chunks]
    assert 21 not in want_dates[0] and 21 in want_dates[1]
    assert calls["queries"] == [len(d) for d in want_dates] and calls["queries"][1] == 20
    want_windows = [len({min(max(t - 5, 0), t_all - N_DATES) for t in d}) for d in want_dates]
    assert calls["windows"] == [n for n in want_windows for _ in range(2)]  # s1, s2 per chunk
    assert want_windows[0] < t_all - N_DATES + 1


def test_wanted_mask_of_nothing_and_everything(s2_model, fused):
    gen = _seed(27)
    t_all, h, w = 13, 5, 6
    x = {"s1": _scene(gen, t_all, 2, h, w), "s2": _scene(gen, t_all, 10, h, w)}
    days = _days(gen, t_all)
    with torch.no_grad():
        for model, inputs in ((s2_model, x["s2"]), (fused, x)):
            assert torch.isnan(model.encode_scene(inputs, days, wanted=torch.zeros(t_all, h, w, dtype=torch.bool))).all()
            full = model.encode_scene(inputs, days)
            assert torch.equal(model.encode_scene(inputs, days, wanted=torch.ones(t_all, h, w, dtype=torch.bool)), full)
            region = (slice(1, 4), slice(2, 6))
            with pytest.raises(ValueError, match=r"wanted must be a bool mask \(dates, rows, columns\) = \(13, 3, 4\)"):
                model.encode_scene(inputs, days, region=region, wanted=torch.ones(t_all, h, w, dtype=torch.bool))
            with pytest.raises(ValueError, match="wanted must be a bool mask"):
                model.encode_scene(inputs, days, wanted=torch.ones(t_all, h, w))


def test_all_positions_of_chosen_windows_equal_those_of_all_windows(s2_model):
    """``forward_all_positions(windows=...)``: the chosen windows' rows, in order, from blocks with only some
    of their windows (singletons, runs across a block boundary, whole blocks)."""
    gen = _seed(28)
    t_all, n, pix = 40, N_DATES, 4
    layer = s2_model.encoder.temporal
    s = torch.randn(t_all, pix, layer.w_in.in_features, generator=gen)
    days = _days(gen, t_all)
    with torch.no_grad():
        full = layer.forward_all_positions(s, days, n, windows_per_block=7)
        for windows in ([0], [29], [3, 6, 7, 8, 13, 14, 20], list(range(7, 14)), [0, 1, 2, 5, 9, 10, 11, 12, 13, 27, 28, 29]):
            got = layer.forward_all_positions(s, days, n, windows=windows, windows_per_block=7)
            assert got.shape == (len(windows), n, pix, layer.w_out.out_features)
            assert (got - full[windows]).abs().max() <= TOL, windows
        assert layer.forward_all_positions(s, days, n, windows=[]).shape == (0, n, pix, layer.w_out.out_features)
        for bad in ([30], [4, 4], [5, 2], [-1]):
            with pytest.raises(ValueError, match=r"windows must be increasing starts in \[0, 30\)"):
                layer.forward_all_positions(s, days, n, windows=bad)


# ------------------------------------------------------------------------------------ receptive field


@pytest.mark.slow
@pytest.mark.parametrize("which", ["s2", "fused"])
def test_receptive_field_is_the_patch_and_the_window(which, s2_model, fused):
    gen = _seed(30)
    t_all, h, w, t, y, x_ = 20, 24, 24, 10, 12, 12
    model = s2_model if which == "s2" else fused
    base = {"s1": torch.randn(t_all, 2, h, w, generator=gen), "s2": torch.randn(t_all, 10, h, w, generator=gen)}
    days = _days(gen, t_all)

    def embed(scene):
        inp = scene["s2"] if which == "s2" else scene
        with torch.no_grad():
            return model.encode_scene(inp, days)[t, :, y, x_]

    ref = embed(base)

    def changed(date, yy, xx):
        mod = {k: v.clone() for k, v in base.items()}
        mod["s2"][date, :, yy, xx] += 5.0
        return not torch.allclose(embed(mod), ref, atol=0, rtol=0)

    # Spatial: the 15 x 15 patch around (y, x) is inside, one pixel further is outside.
    assert changed(t, y + R, x_ - R) and changed(t, y - R, x_ + R)
    assert not changed(t, y + R + 1, x_) and not changed(t, y, x_ - R - 1)
    # Temporal: dates t-5 .. t+5 are inside the window, t-6 and t+6 outside.
    assert changed(t - 5, y, x_) and changed(t + 5, y, x_)
    assert not changed(t - 6, y, x_) and not changed(t + 6, y, x_)


# ------------------------------------------------------------------------------------ time encoding


def test_irregular_gaps_change_the_encoding_and_origin_does_not(s2_model):
    gen = _seed(40)
    x = torch.randn(3, N_DATES, 10, P, P, generator=gen)
    regular = torch.arange(N_DATES, dtype=torch.float32).expand(3, -1) * 5
    irregular = regular.clone()
    irregular[:, 7:] += 30  # a 35-day gap (e.g. clouds) after date 6, same index layout
    with torch.no_grad():
        z_reg, z_irr = s2_model.encode_patches(x, regular), s2_model.encode_patches(x, irregular)
        z_shift = s2_model.encode_patches(x, regular + 1234.5)
    assert (z_reg - z_irr).abs().max() > 1e-3
    assert (z_reg - z_shift).abs().max() <= TOL  # only day differences matter, not the origin


# ------------------------------------------------------------------------------------ shapes, NaN, grads


def test_shapes_and_finiteness_with_nan(s1_model, s2_model):
    gen = _seed(50)
    for model in (s1_model, s2_model):
        c = model.config.n_bands
        x = torch.randn(4, N_DATES, c, P, P, generator=gen)
        x[0] = float("nan")  # a fully invalid patch
        x[1, :, :, :, :7] = float("nan")
        x[2, 3] = float("nan")
        days = _days(gen, N_DATES).expand(4, -1)
        recon, z = model(x, days)
        assert z.shape == (4, N_DATES, model.config.latent_dim) and recon.shape == (4, N_DATES, c, P, P)
        assert torch.isfinite(z).all() and torch.isfinite(recon).all()
        assert z.dtype == recon.dtype == torch.float32


def _masked_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    valid = torch.isfinite(x)
    return ((recon - torch.nan_to_num(x)) ** 2 * valid).sum() / valid.sum()


@pytest.mark.parametrize("make", [s1_config, s2_config])
def test_gradients_reach_every_parameter(make):
    gen = _seed(60)
    model = SensorAutoencoder(_small(make())).train()
    c = model.config.n_bands
    x = torch.randn(3, N_DATES, c, P, P, generator=gen)
    x[torch.rand(x.shape, generator=gen) < 0.2] = float("nan")
    recon, _ = model(x, _days(gen, N_DATES).expand(3, -1))
    _masked_mse(recon, x).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_fusion_trains_only_fusion_layers(fused):
    gen = _seed(70)
    fused.train()  # frozen sensor models must stay in eval mode
    try:
        assert all(not m.training for m in fused.sensors.modules())
        assert fused.temporal.training
        x = {"s1": torch.randn(2, N_DATES, 2, P, P, generator=gen), "s2": torch.randn(2, N_DATES, 10, P, P, generator=gen)}
        x["s2"][0, 4] = float("nan")
        out = fused(x, _days(gen, N_DATES).expand(2, -1))
        assert out.latent.shape == (2, N_DATES, 7)
        assert {k: v.shape for k, v in out.reconstructions.items()} == {
            "s1": (2, N_DATES, 2, P, P), "s2": (2, N_DATES, 10, P, P)}
        assert out.sensor_latents["s1"].shape == (2, N_DATES, 2) and out.sensor_latents["s2"].shape == (2, N_DATES, 9)
        sum(_masked_mse(out.reconstructions[k], x[k]) for k in x).backward()
        frozen = list(fused.sensors.parameters())
        assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
        trainable = fused.fusion_parameters()
        assert {id(p) for p in trainable} == {id(p) for p in fused.parameters() if p.requires_grad}
        assert all(p.grad is not None and torch.any(p.grad != 0) for p in trainable)
    finally:
        fused.zero_grad(set_to_none=True)
        fused.eval()


def test_three_sensor_fusion_from_config():
    gen = _seed(80)
    configs = {"s1": _small(s1_config()), "s2": _small(s2_config()),
               "thermal": _small(AutoencoderConfig(sensor="thermal", n_bands=3, latent_dim=4))}
    model = FusionModel({k: SensorAutoencoder(c) for k, c in configs.items()}, FusionConfig(latent_dim=7))
    model.freeze_sensor_models().eval()
    assert model.sensor_names == ["s1", "s2", "thermal"]
    assert model.temporal.w_in.in_features == 3 * FusionConfig().proj_dim
    t_all, h, w = 12, 6, 5
    x = {k: _scene(gen, t_all, c.n_bands, h, w) for k, c in configs.items()}
    days = _days(gen, t_all)
    with torch.no_grad():
        dense = model.encode_scene(x, days)
        t, pixels = 6, [(0, 0), (3, 2)]
        z = model.encode_patches({k: _patches(v, t, pixels) for k, v in x.items()},
                                 days[1:12].expand(2, -1))
        out = model({k: _patches(v, t, pixels) for k, v in x.items()}, days[1:12].expand(2, -1))
    assert dense.shape == (t_all, 7, h, w)
    assert (z[:, C_T] - torch.stack([dense[t, :, y, x_] for y, x_ in pixels])).abs().max() <= TOL
    assert out.reconstructions["thermal"].shape == (2, N_DATES, 3, P, P)
    with pytest.raises(ValueError, match="expected inputs for sensors"):
        model.encode_scene({"s1": x["s1"], "s2": x["s2"]}, days)


def test_fusion_rejects_mismatched_geometry():
    a = SensorAutoencoder(_small(s1_config()))
    b = SensorAutoencoder(_small(s2_config(n_dates=9)))
    with pytest.raises(ValueError, match="disagree"):
        FusionModel({"s1": a, "s2": b})


def test_model_info_counts(s2_model, fused):
    info = model_info(s2_model, scene=(12, 16, 16))
    p = info["parameters"]
    assert p["total"] == sum(x.numel() for x in s2_model.parameters())
    assert p["trainable"] == sum(x.numel() for x in s2_model.parameters() if x.requires_grad)
    assert sum(v["total"] for v in p["per_submodule"].values()) == p["total"]
    assert info["latent_sizes"] == {"s2": 9} and info["receptive_field"] == 15
    flops = info["flops_per_embedding"]
    assert 0 < flops["dense"] < flops["patch"] / 50  # sharing saves well over an order of magnitude
    finfo = model_info(fused, flops=False)
    assert finfo["latent_sizes"] == {"fused": 7, "s1": 2, "s2": 9}
    assert finfo["parameters"]["trainable"] == finfo["fusion_parameters"] > 0


@pytest.mark.parametrize("make", [s1_config, s2_config])
def test_untrained_decoder_predicts_about_the_value_offset(make):
    """Small output init + value offset: an untrained model starts near the typical value, not O(0.5) noise."""
    gen = _seed(80)
    model = SensorAutoencoder(make()).eval()
    c = model.config.n_bands
    x = model.config.value_offset + 0.1 * torch.randn(2, N_DATES, c, P, P, generator=gen)
    with torch.no_grad():
        recon, _ = model(x, _days(gen, N_DATES).expand(2, -1))
    assert (recon - model.config.value_offset).abs().max() < 0.05


def test_centre_skip_is_optional_and_changes_the_parameters():
    with_skip = SensorAutoencoder(_small(s1_config()))
    without = SensorAutoencoder(_small(s1_config(centre_skip=False, linear_paths=False)))
    assert with_skip.encoder.spatial.skip is not None and without.encoder.spatial.skip is None
    assert without.decoder.linear is None and without.encoder.temporal.w_lin is None


def test_scene_features_in_date_chunks_equal_one_call(s2_model, monkeypatch):
    """The spatial stage runs a few dates per call (memory); the chunking must not change the features."""
    import latentcube.nn.autoencoder as ae

    gen = _seed(22)
    x = _scene(gen, 13, 10, 9, 8)  # NaN-padded to 23 x 22 = 506 pixels per date
    with torch.no_grad():
        monkeypatch.setattr(ae, "SPATIAL_CHUNK_PIXEL_DATES", 10**9)
        whole = s2_model.encoder.scene_features(x)
        monkeypatch.setattr(ae, "SPATIAL_CHUNK_PIXEL_DATES", 5 * 506)  # chunks of 5, 5, 3 dates
        chunked = s2_model.encoder.scene_features(x)
    assert chunked.shape == whole.shape == (13, 9 * 8, s2_model.config.widths[-1])
    assert (chunked - whole).abs().max() <= 1e-6


def test_dates_without_data_in_a_tile_go_through_the_spatial_stage_once(s2_model):
    """Dates with no valid value in a tile (and its halo) share one spatial pass; the embeddings stay those
    of the per-patch encoder, also where a date is blank in some tiles only."""
    gen = _seed(24)
    t_all, h, w = 13, 30, 30
    x, days = _scene(gen, t_all, 10, h, w, nan_fraction=0.05), _days(gen, t_all)  # date 2 wholly invalid
    x[7] = float("nan")
    x[5, :, :, :15] = float("nan")  # blank in the tiles whose halo ends left of column 15
    seen = []
    hook = s2_model.encoder.spatial.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            whole = s2_model.encode_scene(x, days, tile=None)
            assert sum(seen) == (t_all - 2) + 1  # 11 dates with data + one blank pass for dates 2 and 7
            seen.clear()
            tiled = s2_model.encode_scene(x, days, tile=6)  # tiles of columns 0-5 see date 5 as blank
            assert sum(seen) == 20 * 12 + 5 * 11  # 5 x 5 tiles; date 5 blank in the 5 of columns 0-5
            pixels = [(0, 0), (4, 3), (h // 2, 5), (h - 1, 2), (h // 2, w // 2), (h - 1, w - 1)]
            for t in (4, 5, 6, 7, 8):
                s = _start(t, t_all)
                z = s2_model.encode_patches(_patches(x, t, pixels), days[s : s + N_DATES].expand(len(pixels), -1))
                ref = torch.stack([whole[t, :, y, x_] for y, x_ in pixels])
                assert (z[:, t - s] - ref).abs().max().item() <= TOL, f"date {t}"
    finally:
        hook.remove()
    assert (tiled - whole).abs().max() <= TOL


def test_fused_path_attention_equals_generic_windows(s2_model, fused):
    """The fused dense path's two attention forms equal ``forward_windows`` on the same rows: every
    position of every window (several blocks of windows, the last one short), and one query per target
    over its window's rows (the series' end windows shared by several targets, and arbitrary starts)."""
    gen = _seed(23)
    t_all, n, pix = 40, N_DATES, 5
    days = _days(gen, t_all)
    n_win = t_all - n + 1
    rows = (torch.arange(n_win)[:, None] + torch.arange(n)).repeat_interleave(n, dim=0)
    qpos = torch.arange(n).repeat(n_win)
    layer = s2_model.encoder.temporal
    s = torch.randn(t_all, pix, layer.w_in.in_features, generator=gen)
    with torch.no_grad():
        ref = layer.forward_windows(s, days, rows, qpos)
        for per_block in (12, 7):  # 30 windows: blocks of 12, 12, 6 and 7, 7, 7, 7, 2
            got = layer.forward_all_positions(s, days, n, windows_per_block=per_block)
            assert got.shape == (n_win, n, pix, layer.w_out.out_features)
            assert (got.flatten(0, 1) - ref).abs().max() <= TOL
        fl = fused.temporal
        tokens = torch.randn(n_win, n, pix, fl.w_in.in_features, generator=gen)
        row_days = days[(torch.arange(n_win)[:, None] + torch.arange(n))]
        for starts in (window_starts(t_all, n), torch.tensor([3, 3, 4, 5, 0, 29, 12, 13])):
            query_pos = torch.randint(0, n, (len(starts),), generator=gen)
            want = fl.forward_windows(tokens.flatten(0, 1), row_days.flatten(), starts[:, None] * n + torch.arange(n),
                                      query_pos)
            got = fl.forward_window_queries(tokens, row_days, starts, query_pos)
            assert got.shape == (len(starts), pix, fl.w_out.out_features)
            assert (got - want).abs().max() <= TOL


def test_inference_linear_equals_the_eager_layer_and_keeps_autograd():
    """``blocks.linear``: oneDNN's fused linear (+ exact GELU) in CPU inference, eager ops with autograd."""
    from latentcube.nn.blocks import linear

    gen = _seed(24)
    x = torch.randn(6, 5, 32, generator=gen)
    for layer in (torch.nn.Linear(32, 64), torch.nn.Linear(32, 9, bias=False)):
        with torch.no_grad():
            for gelu in (False, True):
                want = F.linear(x, layer.weight, layer.bias)
                want = F.gelu(want) if gelu else want
                got = linear(x, layer, gelu=gelu)
                assert got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max()
            # a non-contiguous input (a transposed view) gives the same rows
            xt = x.transpose(0, 1)
            assert (linear(xt, layer) - F.linear(xt, layer.weight, layer.bias)).abs().max() <= 1e-5
        y = linear(x, layer, gelu=True)
        assert y.requires_grad
        y.sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_dense_path_with_onednn_linears_equals_the_eager_ops(fused, monkeypatch):
    """The dense fused embedding is the same with the fused oneDNN linears (where torch has them) and
    with plain ``F.linear`` + ``F.gelu``; the fused op is really what inference runs on CPU."""
    import latentcube.nn.blocks as blocks

    if blocks._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    gen = _seed(25)
    t_all, h, w = 14, 9, 8
    x = {"s1": _scene(gen, t_all, 2, h, w), "s2": _scene(gen, t_all, 10, h, w)}
    days = _days(gen, t_all)
    calls = []
    onednn = blocks._ONEDNN_LINEAR
    monkeypatch.setattr(blocks, "_ONEDNN_LINEAR", lambda *a: (calls.append(a[-3]), onednn(*a))[1])
    with torch.inference_mode():
        fast = fused.encode_scene(x, days)
        assert "gelu" in calls and "none" in calls  # the FFN's first layer with its GELU, and plain layers
        monkeypatch.setattr(blocks, "_ONEDNN_LINEAR", None)
        eager = fused.encode_scene(x, days)
    assert torch.isfinite(fast).all() and (fast - eager).abs().max() <= 1e-5


def test_fusion_context_settings_are_checked(s1_model, s2_model):
    with pytest.raises(ValueError, match="context_px must be 0 .off. or an odd size >= 3, got 4"):
        FusionConfig(context_px=4)
    with pytest.raises(ValueError, match="needs context_px > 0"):
        FusionConfig(context_dims=2)
    with pytest.raises(ValueError, match=r"context_dims must be in 0..6 \(latent_dim=7, context_share=1.0\)"):
        FusionConfig(context_px=5, context_dims=7)
    assert FusionConfig(context_px=5, context_dims=7, context_share=0.5).context_dims == 7  # all dims, half each
    with pytest.raises(ValueError, match=r"context_share must be in \(0, 1\], got 1.5"):
        FusionConfig(context_px=5, context_dims=2, context_share=1.5)
    with pytest.raises(ValueError, match="wider than the 15-px patch"):
        FusionModel({"s1": s1_model, "s2": s2_model}, FusionConfig(context_px=17))
    plain = SensorAutoencoder(dataclasses.replace(_small(s2_config()), linear_patch=False))
    with pytest.raises(ValueError, match=r"\['s2'\] have none. Fix: retrain them with model: \{linear_patch: true\}"):
        FusionModel({"s1": s1_model, "s2": plain}, FusionConfig(context_px=5))
    # one more token part per sensor: the fusion layer's input widens, the default keeps the paper's width
    model = FusionModel({"s1": s1_model, "s2": s2_model}, FusionConfig(context_px=3, proj_dim=9, d_model=36))
    assert model.temporal.w_in.in_features == 4 * 9 and set(model.project_context) == {"s1", "s2"}
    assert FusionModel({"s1": s1_model, "s2": s2_model}).temporal.w_in.in_features == 2 * 16


def test_fusion_with_context_round_trips_through_its_model_file(fused_context, tmp_path):
    from latentcube.nn.model_file import load_model, save_model
    from latentcube.preprocess import Normalization

    path = save_model(tmp_path / "model.pt", fused_context, normalization=Normalization())
    loaded, _ = load_model(path)
    assert loaded.config == fused_context.config and loaded.config.context_px == 5
    gen = _seed(30)
    x = {"s1": _scene(gen, 12, 2, 9, 9), "s2": _scene(gen, 12, 10, 9, 9)}
    days = _days(gen, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode_scene(x, days), fused_context.encode_scene(x, days))
