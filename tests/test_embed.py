"""Embedding cubes (issue 7): dense blocks equal the per-patch encoder, block/worker independence, resume,
NaN layout, metadata, the output readable in a fresh process, the quality layer against the public decoder
and the per-patch forward, and int8 storage within its documented error."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

# distributed reads the machine's memory from psutil once, at import, for every later LocalCluster's
# worker limit. Two tests below patch psutil.virtual_memory (1 GiB, 64 GiB): were distributed first
# imported under the 1 GiB patch, the LocalCluster tests' workers would get 512 MiB and be killed.
import distributed.system  # noqa: F401
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from latentcube.cube import CubeError, new_cube, save_cube
from latentcube.embed import (
    EmbedError,
    block_grid,
    dates_without_valid_pixel,
    embed_cube,
    embed_pixels,
    open_embedding,
    quantize_int8,
)
from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, s1_config, s2_config
from latentcube.preprocess import Normalization, match_s1_to_s2, smooth_s1
from latentcube.train import save_model

TOL = 1e-5
N_DATES, P, R, CENTRE = 11, 15, 7, 5
H = W = 40
T2, T1 = 16, 20
# Tiny networks (same classes): the dense/patch equality does not depend on width.
SMALL = dict(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, n_heads=2, ffn_dim=16, decoder_d_model=16,
             decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4)
# Interior, edges, corners and pixels on both sides of the 16- and 24-pixel block boundaries.
PIXELS = [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1), (20, 20), (0, 17), (23, 0), (15, 16), (16, 15),
          (23, 24), (24, 23), (31, 39), (39, 8), (5, 33)]
DATES = [5, 7, 10]  # away from the series ends: the target sits at window position 5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on 2 shared cores, torch's spinning thread pool is ~20x slower under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cube(seed: int = 0) -> xr.Dataset:
    """40 x 40 px, 16 S2 dates (5-day revisit) with NaN clouds, 20 S1 dates (some S2 dates unmatched)."""
    rng = np.random.default_rng(seed)
    s2 = (rng.random((T2, 10, H, W)) * 0.4 + 0.02).astype("float32")
    s2 = np.where((rng.random((T2, H, W)) < 0.12)[:, None], np.nan, s2)  # scattered invalid pixel-dates
    s2 = s2.astype("float32")
    s2[3, :, 5:25, 10:30] = np.nan  # a cloud
    s2[9] = np.nan  # a fully invalid date
    s2[12, 8, 30:, :] = np.nan  # one band missing over a strip: the pixel stays valid (other bands)
    t2 = pd.Timestamp("2020-03-01T10:30") + pd.to_timedelta(5 * np.arange(T2), "D")
    # S1 every 4 days from 1 day after the first S2 date, with a 20-day outage -> unmatched S2 dates.
    s1_days = np.concatenate([np.arange(1, 41, 4), np.arange(61, 61 + 4 * 14, 4)])[:T1]
    t1 = pd.Timestamp("2020-03-01T17:45") + pd.to_timedelta(s1_days, "D")
    s1 = rng.gamma(4.0, 0.03, (T1, 2, H, W)).astype("float32")
    s1 = np.where((rng.random((T1, H, W)) < 0.05)[:, None], np.nan, s1).astype("float32")
    return new_cube(s2=s2, time=t2, y=5_600_000.0 - 10 * np.arange(H) - 5, x=600_000.0 + 10 * np.arange(W) + 5,
                    crs="EPSG:32632", s1=s1, time_s1=t1)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory) -> Path:
    return save_cube(_cube(), tmp_path_factory.mktemp("cube") / "site.zarr")


def _sensor(cfg, seed: int) -> SensorAutoencoder:
    torch.manual_seed(seed)
    model = SensorAutoencoder(replace(cfg, **SMALL)).eval()
    # Default torch init for the decoder: the package starts output layers near zero (reconstruction ~
    # constant), which would make the quality-layer tests insensitive to the decoder input.
    for module in model.decoder.modules():
        if module is not model.decoder and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    norm = Normalization()
    s1, s2 = _sensor(s1_config(), 1), _sensor(s2_config(), 2)
    torch.manual_seed(3)
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig(proj_dim=8, d_model=16, ffn_dim=16))
    fused = fused.freeze_sensor_models().eval()
    return {"s2": save_model(d / "s2.pt", s2, normalization=norm), "s1": save_model(d / "s1.pt", s1, normalization=norm),
            "fusion": save_model(d / "fusion.pt", fused, normalization=norm)}


@pytest.fixture(scope="module")
def fused_emb(cube_path, models, tmp_path_factory) -> Path:
    """Fused + per-sensor embeddings, block 16, in-process: the reference run for several tests."""
    return embed_cube(cube_path, models["fusion"], tmp_path_factory.mktemp("emb") / "f16.zarr", block_px=16,
                      sensors=("fused", "s1", "s2"), quality=True, scheduler="synchronous", progress=False)


@pytest.fixture(scope="module")
def fused_plain(cube_path, models, tmp_path_factory) -> Path:
    """The default run (fused only, no quality layer, block 16): its encoders skip invalid targets."""
    return embed_cube(cube_path, models["fusion"], tmp_path_factory.mktemp("emb") / "plain.zarr", block_px=16,
                      **FUSED)


def _load(path: Path) -> tuple[torch.nn.Module, dict]:
    from latentcube.train import load_model

    return load_model(path)


# ---------------------------------------------------------------------------- independent reference


def _reference_inputs(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Model inputs built the way training builds them, through the xarray-level helpers."""
    norm = Normalization()
    s2 = norm.normalize_array(ds["s2"].values, list(ds["band"].values), "s2", axis=1)
    s1 = match_s1_to_s2(smooth_s1(ds, window=3), max_gap_days=6.0).values  # nearest within 6 days, else NaN
    return {"s2": s2, "s1": norm.normalize_array(s1, list(ds["band_s1"].values), "s1", axis=1)}


def _patch(arr: np.ndarray, t: int, y: int, x: int, n: int = N_DATES) -> torch.Tensor:
    """The n-date (11), 15 x 15 patch centred on (y, x) with target t at position n // 2; NaN outside the scene."""
    padded = np.pad(arr, ((0, 0), (0, 0), (R, R), (R, R)), constant_values=np.nan)
    return torch.from_numpy(padded[t - n // 2 : t - n // 2 + n, :, y : y + P, x : x + P].copy())


def _days(times: np.ndarray) -> np.ndarray:
    return (pd.DatetimeIndex(times) - pd.DatetimeIndex(times)[0]).total_seconds().values / 86400.0


def _reference(model, inputs: dict[str, np.ndarray], times: np.ndarray, which: str, n: int = N_DATES) -> np.ndarray:
    """Per-patch embeddings (len(DATES), len(PIXELS), L) from ``encode_patches`` at position n // 2 (5)."""
    days = torch.tensor(_days(times), dtype=torch.float32)
    out = []
    with torch.no_grad():
        for t in DATES:
            d = days[t - n // 2 : t - n // 2 + n].expand(len(PIXELS), -1)
            x = {k: torch.stack([_patch(v, t, y, xx, n) for y, xx in PIXELS]) for k, v in inputs.items()}
            if which == "fused":
                z = model.encode_patches(x, d)
            elif isinstance(model, FusionModel):
                z = model.sensors[which].encode_patches(x[which], d)
            else:
                z = model.encode_patches(x[which], d)
            out.append(z[:, n // 2].numpy())
    return np.stack(out)


def _dense_at(emb: xr.DataArray, features: list[str]) -> np.ndarray:
    sel = emb.sel(feature=features).values  # (T, F, H, W)
    return np.stack([np.stack([sel[t, :, y, x] for y, x in PIXELS]) for t in DATES])


def _invalid(ds_var: np.ndarray) -> np.ndarray:
    return ~np.isfinite(ds_var).any(axis=1)  # (T, H, W)


def _compare(dense: np.ndarray, ref: np.ndarray, invalid: np.ndarray) -> None:
    mask = np.stack([np.array([invalid[t, y, x] for y, x in PIXELS]) for t in DATES])  # (dates, pixels)
    assert np.isnan(dense[mask]).all()
    assert np.isfinite(dense[~mask]).all() and (~mask).sum() > 30
    err = np.abs(dense[~mask] - ref[~mask]).max()
    assert err <= TOL, f"max abs diff {err}"


# ----------------------------------------------------------------------------------------- tests


def test_block_grid_covers_the_grid_once():
    blocks = block_grid(40, 33, 16)
    assert [(b[0], b[1]) for b in blocks][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    cover = np.zeros((40, 33), int)
    for _, _, ys, xs in blocks:
        cover[ys, xs] += 1
        assert ys.start % 16 == 0 and xs.start % 16 == 0
    assert (cover == 1).all() and len(blocks) == 9
    assert block_grid(5, 5, 256) == [(0, 0, slice(0, 5), slice(0, 5))]
    with pytest.raises(ValueError, match="positive"):
        block_grid(5, 5, 0)


def test_fusion_embedding_equals_per_patch_encoder(cube_path, models, fused_emb):
    ds = _cube()
    model, _ = _load(models["fusion"])
    emb = xr.open_zarr(fused_emb)["embedding"]
    names = [str(f) for f in emb["feature"].values]
    assert names == [f"fused_{i}" for i in range(7)] + ["s1_0", "s1_1"] + [f"s2_{i}" for i in range(9)]
    assert emb.dims == ("time", "feature", "y", "x") and emb.dtype == np.float32
    np.testing.assert_array_equal(emb["time"].values, ds["time"].values)
    inputs = _reference_inputs(ds)
    invalid = _invalid(ds["s2"].values)
    for which in ("fused", "s1", "s2"):
        ref = _reference(model, inputs, ds["time"].values, which)
        _compare(_dense_at(emb, [n for n in names if n.startswith(which + "_")]), ref, invalid)


@pytest.fixture(scope="module")
def s2_emb(cube_path, models, tmp_path_factory) -> Path:
    return embed_cube(cube_path, models["s2"], tmp_path_factory.mktemp("emb") / "s2.zarr", block_px=24,
                      scheduler="synchronous", progress=False)


@pytest.mark.parametrize("sensor", ["s2", "s1"])
def test_autoencoder_embedding_equals_per_patch_encoder(cube_path, models, s2_emb, tmp_path, sensor):
    out = s2_emb if sensor == "s2" else embed_cube(cube_path, models[sensor], tmp_path / "e.zarr", block_px=24,
                                                   scheduler="synchronous", progress=False)
    ds = _cube()
    model, _ = _load(models[sensor])
    emb = xr.open_zarr(out)["embedding"]
    norm = Normalization()
    if sensor == "s2":
        arr, times = norm.normalize_array(ds["s2"].values, list(ds["band"].values), "s2"), ds["time"].values
    else:  # an S1 model embeds on its own (smoothed) acquisition dates
        arr = norm.normalize_array(smooth_s1(ds)["s1"].values, ["VV", "VH"], "s1")
        times = ds["time_s1"].values
    np.testing.assert_array_equal(emb["time"].values, times)
    assert [str(f) for f in emb["feature"].values] == [f"{sensor}_{i}" for i in range(model.latent_dim)]
    ref = _reference(model, {sensor: arr}, times, sensor)
    _compare(_dense_at(emb, list(emb["feature"].values)), ref, _invalid(arr))


def test_a_model_of_another_window_length_embeds_with_its_window(cube_path, tmp_path):
    model = _sensor(replace(s2_config(), n_dates=9), 4)
    path = save_model(tmp_path / "s2_9.pt", model, normalization=Normalization())
    out = embed_cube(cube_path, path, tmp_path / "e9.zarr", block_px=24, scheduler="synchronous", progress=False)
    ds = _cube()
    arr = Normalization().normalize_array(ds["s2"].values, list(ds["band"].values), "s2")
    ref = _reference(model, {"s2": arr}, ds["time"].values, "s2", n=9)
    emb = xr.open_zarr(out)["embedding"]
    _compare(_dense_at(emb, list(emb["feature"].values)), ref, _invalid(arr))
    window = xr.open_zarr(out).attrs["latentcube:time"]["window"]
    assert window.startswith("9 consecutive dates t-4..t+4"), window


def test_nan_exactly_where_the_centre_is_invalid(fused_emb):
    ds = _cube()
    emb = xr.open_zarr(fused_emb)["embedding"].values
    invalid = _invalid(ds["s2"].values)
    # the fixture: a fully invalid date; a strip missing one band whose pixels stay valid
    assert invalid[9].all() and np.isnan(ds["s2"].values[12, 8, 30:]).all() and (~invalid[12, 30:]).sum() > 300
    nan = np.isnan(emb)
    assert (nan.all(axis=1) == nan.any(axis=1)).all()  # a pixel-date is all-NaN or all-finite
    np.testing.assert_array_equal(nan.any(axis=1), invalid)


def _fused_only(path: Path) -> np.ndarray:
    emb = xr.open_zarr(path)["embedding"]
    return emb.sel(feature=[f for f in emb["feature"].values if str(f).startswith("fused_")]).values


FUSED = dict(sensors="fused", scheduler="synchronous", progress=False)


def _quality(path: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    return {s: ds[f"quality_{s}"].values for s in ("s2", "s1")}


@pytest.mark.slow
def test_block_size_does_not_change_the_result(cube_path, models, fused_emb, tmp_path):
    other = embed_cube(cube_path, models["fusion"], tmp_path / "f24.zarr", block_px=24, tile=16, quality=True,
                       **FUSED)  # tiles inside blocks too
    emb = xr.open_zarr(other)["embedding"]
    # one shard per block (a file written by that block only) of 8-date inner chunks; T2 = 16 dates
    assert emb.encoding["shards"] == (T2, 7, 24, 24) and emb.encoding["chunks"] == (8, 7, 24, 24)
    np.testing.assert_allclose(emb.values, _fused_only(fused_emb), rtol=0, atol=1e-6)  # only summation order
    ref, got = _quality(fused_emb), _quality(other)
    for s in ("s2", "s1"):  # the decoder amplifies the embeddings' ~1e-7 summation-order differences a little
        np.testing.assert_allclose(got[s], ref[s], rtol=1e-5, atol=1e-6)


def test_embed_pixels_equals_the_cube_embedding(cube_path, models, fused_emb, s2_emb):
    """A few pixels embedded on their own (context from the cube around them) equal the whole-cube store."""
    ref = xr.open_zarr(fused_emb)["embedding"]
    for ys, xs in [(slice(9, 14), slice(3, 6)), (slice(0, 2), slice(W - 3, W))]:  # interior, and a corner
        got = embed_pixels(cube_path, models["fusion"], ys, xs, sensors=("fused", "s1", "s2"))
        want = ref.isel(y=ys, x=xs)
        assert got.dims == want.dims and got.shape == want.shape
        np.testing.assert_array_equal(got["feature"].values, want["feature"].values)
        np.testing.assert_array_equal(got["y"].values, want["y"].values)
        np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-6)  # NaN layout included
    got = embed_pixels(_cube(), models["s2"], slice(4, 7), slice(10, 12))  # in-memory cube, autoencoder
    np.testing.assert_allclose(got.values, xr.open_zarr(s2_emb)["embedding"].isel(y=slice(4, 7), x=slice(10, 12)).values,
                               rtol=0, atol=1e-6)
    with pytest.raises(EmbedError, match="non-empty step-1 slices"):
        embed_pixels(cube_path, models["s2"], slice(5, 5), slice(0, 2))
    # The data model is checked where the pixels read it (region and 7-px context), not across the cube:
    # nodata stored as 0 in the far corner refuses the whole cube and the pixels next to it only.
    zeros = _cube()
    zeros["s2"][:, :, -10:, -10:] = 0.0
    with pytest.raises(CubeError, match="s2 pixel-dates are 0 in every band"):
        embed_pixels(zeros, models["s2"], slice(H - 12, H - 11), slice(W - 12, W - 11))
    got = embed_pixels(zeros, models["s2"], slice(4, 7), slice(10, 12))
    np.testing.assert_allclose(got.values, xr.open_zarr(s2_emb)["embedding"].isel(y=slice(4, 7), x=slice(10, 12)).values,
                               rtol=0, atol=1e-6)


def test_warns_when_the_cube_has_another_pixel_size_than_the_training_data(cube_path, models, tmp_path):
    from latentcube.nn.model_file import load_model as load

    model, meta = load(models["s2"])
    at20 = save_model(tmp_path / "s2_20m.pt", model, normalization=Normalization.from_dict(meta["normalization"]),
                      pixel_size_m=20.0)
    assert load(at20)[1]["pixel_size_m"] == 20.0 and meta["pixel_size_m"] is None  # unknown: never warns
    with pytest.warns(UserWarning, match=r"trained on 20 m pixels and the cube has 10 m pixels: its 15 x 15-pixel "
                                         r"context covers 150 m instead of 300 m.*Fix: resample the cube to 20 m"):
        embed_cube(cube_path, at20, tmp_path / "e.zarr", block_px=64, scheduler="synchronous", progress=False)


def test_default_workers_fit_the_memory():
    from latentcube.embed import default_workers, worker_memory_estimate

    gib = 1024**3
    # 1 GiB + 100 B x (256 + 14)^2 px x 73 dates = 1,073,741,824 + 532,170,000 bytes (1.50 GiB).
    assert worker_memory_estimate(73, 256) == 1_605_911_824
    assert worker_memory_estimate(73, 128, halo=7) == gib + 100 * 142**2 * 73
    per = worker_memory_estimate(73, 256)
    assert default_workers(16, 100, per, 14 * gib) == 7  # 16 GB, 16 cores: 0.8 x 14 / 1.50 = 7.5, not 8
    assert default_workers(8, 100, per, 14 * gib) == 4  # 8 cores: one worker per 2 cores
    assert default_workers(8, 100, per, 7 * gib) == 3  # 8 GB: 0.8 x 7 / 1.50 = 3.7
    assert default_workers(2, 100, per, 23 * gib) == 1  # the 2-core CI machine: one worker of 2 threads
    assert default_workers(3, 100, per, 23 * gib) == 1
    assert default_workers(8, 3, per, 64 * gib) == 3  # never more workers than blocks
    assert default_workers(4, 10, per, 1 * gib) == 1  # at least one
    assert default_workers(1, 10, per, 64 * gib) == 1


@pytest.mark.parametrize("cores, cluster_workers", [(2, None), (4, 2), (8, 4)])  # 3 cores: default_workers test
def test_default_scheduler_runs_a_single_worker_in_process(cube_path, models, tmp_path, monkeypatch, cores,
                                                          cluster_workers):
    """The default is a LocalCluster of one worker per 2 cores; where that is one worker, the blocks run in
    this process (no second copy of the model and libraries, no cluster start-up)."""
    import psutil

    import latentcube.embed._api as embed

    class Roomy:  # this machine's free memory must not decide the worker count here
        total, available = 64 * 1024**3, 64 * 1024**3

    clusters, in_process = [], []
    monkeypatch.setattr(embed.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Roomy())
    monkeypatch.setattr(embed, "_run_distributed", lambda plan, source, todo, scheduler, n_workers, *a: (
        clusters.append((scheduler, n_workers, len(todo)))))
    run_block = embed._run_block
    monkeypatch.setattr(embed, "_run_block", lambda *a: (in_process.append(a[2:4]), run_block(*a))[1])
    embed_cube(cube_path, models["s2"], tmp_path / "e.zarr", block_px=16, progress=False, device="cpu")
    if cluster_workers is None:
        assert clusters == [] and sorted(in_process) == [(iy, ix) for iy in range(3) for ix in range(3)]
    else:
        assert clusters == [(None, cluster_workers, 9)] and in_process == []


def test_warns_when_one_block_does_not_fit(cube_path, models, tmp_path, monkeypatch):
    import psutil

    class Tight:  # what psutil.virtual_memory() returns on a machine with little memory left
        total, available = 1024**3, 512 * 1024**2

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    with pytest.warns(UserWarning, match=r"needs ~1.0 GiB per worker, 0.5 GiB are available. Fix: a smaller block "
                                         r"\(--block-px 32\)"):
        embed_cube(cube_path, models["s2"], tmp_path / "e.zarr", block_px=64, scheduler="synchronous", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_matches_in_process(cube_path, models, fused_emb, tmp_path, workers):
    done = []
    out = embed_cube(cube_path, models["fusion"], tmp_path / "dist.zarr", block_px=16, sensors=("fused", "s1", "s2"),
                     quality=True, n_workers=workers, threads_per_worker=1, progress=False,
                     on_block=lambda iy, ix: done.append((iy, ix)))
    assert sorted(done) == [(iy, ix) for iy in range(3) for ix in range(3)]
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, xr.open_zarr(fused_emb)["embedding"].values)
    for s, v in _quality(out).items():
        np.testing.assert_array_equal(v, _quality(fused_emb)[s])


def test_local_cluster_workers_use_one_malloc_arena():
    """Blocks run on worker threads: with one glibc arena their tensors come from the kept heap
    (latentcube.heap.reuse_large_blocks), not from per-thread arenas that map them afresh."""
    import os

    from latentcube.embed._schedule import _client

    client, cluster, _ = _client(None, 1, 1, True)
    try:
        env = client.run(lambda: (os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    finally:
        client.close()
        cluster.close()
    assert list(env.values()) == [("1", None)]


class _Stop(RuntimeError):
    pass


def _chunk_files(out: Path, var: str = "embedding") -> list[str]:
    """The chunk files of ``var`` that exist, as Zarr keys ("c/0/0/1/1" in v3, "0.0.1.1" in format 2)."""
    from latentcube.stores import array_layout

    return [k for k in array_layout(out, var).keys() if (out / var / k).exists()]


def _key(out: Path, *index: int, var: str = "embedding") -> str:
    from latentcube.stores import array_layout

    return array_layout(out, var).key(index)


def _chunk_mtimes(out: Path) -> dict[str, int]:
    return {k: (out / "embedding" / k).stat().st_mtime_ns for k in _chunk_files(out)}


@pytest.mark.slow
def test_resume_after_interruption(cube_path, models, fused_emb, tmp_path):
    out = tmp_path / "resume.zarr"
    kw = dict(block_px=16, quality=True, **FUSED)
    first: list[tuple[int, int]] = []

    def stop_after_four(iy: int, ix: int) -> None:
        first.append((iy, ix))
        if len(first) == 4:
            raise _Stop("simulated kill")

    with pytest.raises(_Stop):
        embed_cube(cube_path, models["fusion"], out, on_block=stop_after_four, **kw)
    markers = sorted(p.name for p in (out / ".blocks").glob("*.done"))
    assert markers == sorted(f"{iy}_{ix}.done" for iy, ix in first)
    before = _chunk_mtimes(out)
    partial = xr.open_zarr(out)["embedding"].values
    assert np.isnan(partial[:, :, 32:, 32:]).all()  # unfinished blocks read as fill (NaN)

    second: list[tuple[int, int]] = []
    embed_cube(cube_path, models["fusion"], out, on_block=lambda iy, ix: second.append((iy, ix)), **kw)
    assert not set(first) & set(second) and len(first) + len(second) == 9  # nothing computed twice
    after = _chunk_mtimes(out)
    for iy, ix in first:  # chunks of finished blocks were not rewritten
        assert after[_key(out, 0, 0, iy, ix)] == before[_key(out, 0, 0, iy, ix)]
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, _fused_only(fused_emb))
    ref, got = _quality(fused_emb), _quality(out)  # same blocks, same computation: identical
    for s in ("s2", "s1"):
        np.testing.assert_array_equal(got[s], ref[s])

    third: list[tuple[int, int]] = []  # a finished store: nothing left to do
    embed_cube(cube_path, models["fusion"], out, on_block=lambda iy, ix: third.append((iy, ix)), **kw)
    assert third == []


def test_block_written_but_not_marked_is_recomputed(cube_path, models, fused_plain, tmp_path, monkeypatch):
    """A kill between the region write and the marker leaves the block unmarked: the re-run redoes it."""
    import latentcube.embed._store as embed_mod

    out = tmp_path / "half.zarr"
    kw = dict(block_px=16, **FUSED)
    real = embed_mod._write_marker

    def die_on_third(path, iy, ix, info):
        if (iy, ix) == (0, 2):
            raise _Stop("killed after writing the region, before the marker")
        real(path, iy, ix, info)

    monkeypatch.setattr(embed_mod, "_write_marker", die_on_third)
    with pytest.raises(_Stop):
        embed_cube(cube_path, models["fusion"], out, **kw)
    monkeypatch.setattr(embed_mod, "_write_marker", real)
    assert not (out / ".blocks" / "0_2.done").exists()
    redone: list[tuple[int, int]] = []
    embed_cube(cube_path, models["fusion"], out, on_block=lambda iy, ix: redone.append((iy, ix)), **kw)
    assert (0, 2) in redone and (0, 0) not in redone and len(redone) == 7
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, xr.open_zarr(fused_plain)["embedding"].values)


def test_a_format_2_store_written_before_resumes_as_format_2(cube_path, models, fused_plain, tmp_path, monkeypatch):
    """A run interrupted under the writer of before Zarr v3 (format 2) is finished by today's code into the same
    store: its marked blocks are kept (format-2 chunk keys), the store stays format 2, and it reads as a v3 run."""
    import latentcube.stores
    from latentcube.embed import embedding_summary

    out = tmp_path / "old.zarr"
    kw = dict(block_px=16, **FUSED)
    first: list[tuple[int, int]] = []

    def stop_after_four(iy: int, ix: int) -> None:
        first.append((iy, ix))
        if len(first) == 4:
            raise _Stop("simulated kill")

    with monkeypatch.context() as m:
        m.setattr(latentcube.stores, "ZARR_FORMAT", 2)
        with pytest.raises(_Stop):
            embed_cube(cube_path, models["fusion"], out, on_block=stop_after_four, **kw)
    assert (out / ".zmetadata").is_file() and not (out / "zarr.json").exists()
    before = _chunk_mtimes(out)
    assert _key(out, 0, 0, 0, 0) == "0.0.0.0" and "0.0.0.0" in before
    second: list[tuple[int, int]] = []
    embed_cube(cube_path, models["fusion"], out, on_block=lambda iy, ix: second.append((iy, ix)), **kw)
    assert not set(first) & set(second) and len(first) + len(second) == 9  # resumed, nothing computed twice
    assert (out / ".zmetadata").is_file() and not (out / "zarr.json").exists()  # still format 2
    after = _chunk_mtimes(out)
    for iy, ix in first:
        assert after[_key(out, 0, 0, iy, ix)] == before[_key(out, 0, 0, iy, ix)]
    np.testing.assert_array_equal(open_embedding(out).values, open_embedding(fused_plain).values)
    assert embedding_summary(out)["blocks_written"] == "9 of 9"
    assert (fused_plain / "zarr.json").is_file() and _key(fused_plain, 0, 0, 1, 1) == "c/0/0/1/1"  # new runs: v3


def test_finished_block_whose_chunk_went_missing_is_recomputed(cube_path, models, s2_emb, tmp_path, capsys):
    """A chunk file of a finished (marked) block deleted afterwards: `info` names it, and the re-run computes that
    block again (only it) into the store of the uninterrupted run; a deleted chunk no longer stays NaN."""
    import shutil

    from latentcube.cli import main

    out = shutil.copytree(s2_emb, tmp_path / "lost.zarr")
    marker = json.loads((out / ".blocks" / "1_1.done").read_text())
    key = _key(out, 0, 0, 1, 1)
    assert key == "c/0/0/1/1" and key in marker["chunks"]["embedding"]  # Zarr v3 chunk keys
    (out / "embedding" / key).unlink()
    with pytest.raises(SystemExit) as exc:
        main(["info", str(out), "--json"])
    assert exc.value.code == 0
    got = json.loads(capsys.readouterr().out)
    assert got["blocks_written"].startswith("3 of 4 (incomplete: 1 finished block(s) lost chunk files")
    assert got["missing_chunks"] == f"block 1_1: embedding/{key}"
    redone: list[tuple[int, int]] = []
    with pytest.warns(UserWarning, match=rf"1 finished block\(s\) of .*lost chunk files .*block 1_1: embedding/{key}"):
        embed_cube(cube_path, models["s2"], out, block_px=24, scheduler="synchronous", progress=False,
                   on_block=lambda iy, ix: redone.append((iy, ix)))
    assert redone == [(1, 1)]
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, xr.open_zarr(s2_emb)["embedding"].values)
    assert _chunk_files(out) == _chunk_files(s2_emb)
    from latentcube.embed import embedding_summary

    assert embedding_summary(out)["blocks_written"] == "4 of 4" and "missing_chunks" not in embedding_summary(out)


def _lock_of(pid: int, out: Path) -> Path:
    """A lock file beside ``out`` as a run of process ``pid`` on this host leaves it (latentcube.files)."""
    import socket

    lock = out.with_name(out.name + ".lock")
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
                                "token": "other"}))
    return lock


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(cube_path, models, s2_emb, tmp_path):
    """While another live run holds the store's lock, embed (even with --overwrite) refuses, naming that run,
    and deletes nothing; the lock of a run that died is taken over and removed at the end."""
    import shutil

    from latentcube.files import OutputInUseError

    out = shutil.copytree(s2_emb, tmp_path / "shared.zarr")
    kw = dict(block_px=24, scheduler="synchronous", progress=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _lock_of(other.pid, out)
        for overwrite in (False, True):
            with pytest.raises(OutputInUseError, match=rf"embedding store .*shared.zarr is being written by the run of "
                                                       rf"pid {other.pid} on host .*Fix: wait for that run"):
                embed_cube(cube_path, models["s2"], out, overwrite=overwrite, **kw)
        assert len(list((out / ".blocks").glob("*.done"))) == 4 and lock.exists()  # nothing deleted
    finally:
        other.kill()
        other.wait()
    redone: list[tuple[int, int]] = []  # the holder died: its lock is stale
    embed_cube(cube_path, models["s2"], out, on_block=lambda iy, ix: redone.append((iy, ix)), **kw)
    assert redone == [] and not lock.exists()
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, xr.open_zarr(s2_emb)["embedding"].values)


def test_fusion_refuses_a_cube_whose_s1_meets_no_s2_date(cube_path, models, tmp_path):
    """S1 acquired a year after the S2 dates: the fusion model would embed with S1 absent, so it is an error
    with the fix, unless allow_missing_s1 (then a warning, and the store is written)."""
    ds = _cube().isel(y=slice(0, 16), x=slice(0, 16))
    late = ds.assign_coords(time_s1=ds["time_s1"].values + np.timedelta64(400, "D"))
    kw = dict(block_px=16, **FUSED)
    with pytest.raises(CubeError, match=r"the fusion model: S1 covers 0 of 16 "
                                        r"S2 dates.*Fix: .*allow_missing_s1=True"):
        embed_cube(late, models["fusion"], tmp_path / "late.zarr", **kw)
    assert not (tmp_path / "late.zarr").exists()
    with pytest.warns(UserWarning, match="continuing with S1 absent as allowed"):
        out = embed_cube(late, models["fusion"], tmp_path / "late.zarr", allow_missing_s1=True, **kw)
    assert np.isfinite(xr.open_zarr(out)["embedding"].values).any()


def test_skipping_invalid_targets_equals_computing_them(fused_plain, fused_emb, cube_path):
    """Without the quality layer the encoders skip targets whose centre pixel is invalid (NaN in the product
    anyway): the same store as the quality run, which computes every target, up to summation order."""
    plain, full = xr.open_zarr(fused_plain)["embedding"].values, _fused_only(fused_emb)
    np.testing.assert_array_equal(np.isnan(plain), np.isnan(full))
    np.testing.assert_allclose(plain, full, rtol=0, atol=1e-6)
    cloudy = np.isnan(plain).all(axis=(1, 2, 3))
    assert cloudy.any() and not cloudy.all()  # the test cube has dates no pixel wants


def test_metadata_and_fresh_process_read(fused_emb, models):
    import hashlib

    script = (
        "import json, sys, xarray as xr, rioxarray\n"
        "ds = xr.open_zarr(sys.argv[1], decode_coords='all')\n"
        "e = ds['embedding']\n"
        "print(json.dumps({'crs': ds.rio.crs.to_epsg(), 'transform': list(e.rio.transform())[:6],\n"
        "  'dims': list(e.dims), 'shape': list(e.shape), 'attrs': dict(ds.attrs)}, default=str))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(fused_emb)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["crs"] == 32632
    assert info["transform"] == [10.0, 0.0, 600_000.0, 0.0, -10.0, 5_600_000.0]
    assert info["dims"] == ["time", "feature", "y", "x"] and info["shape"] == [T2, 18, H, W]
    a = info["attrs"]
    assert a["checkpoint_sha256"] == hashlib.sha256(models["fusion"].read_bytes()).hexdigest()
    assert a["model_kind"] == "fusion" and a["geoemb:type"] == "pixel" and a["geoemb:dimensions"] == 18
    assert json.loads(a["band_order"]) == {"s1": ["VV", "VH"], "s2": list(_cube()["band"].values)}
    assert json.loads(a["normalization"]) == Normalization().to_dict()
    assert a["latentcube:time"]["n_dates"] == T2 and a["latentcube:time"]["dimension"] == "time"
    assert a["latentcube:time"]["window"].startswith("11 consecutive dates t-5..t+5")
    assert a["spatial:transform"] == [10.0, 0.0, 600_000.0, 0.0, -10.0, 5_600_000.0]


def test_float16_within_documented_error(cube_path, models, s2_emb, tmp_path):
    out = embed_cube(cube_path, models["s2"], tmp_path / "h.zarr", block_px=24, dtype="float16",
                     scheduler="synchronous", progress=False)
    half = xr.open_zarr(out)["embedding"]
    assert half.dtype == np.float16
    full = xr.open_zarr(s2_emb)["embedding"].values
    h = half.values.astype("float32")
    np.testing.assert_array_equal(np.isnan(h), np.isnan(full))
    ok = np.isfinite(full)
    assert (np.abs(h[ok] - full[ok]) <= np.abs(full[ok]) * 2.0**-11 + 2.0**-25).all()


def test_clear_errors(cube_path, models, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        embed_cube(cube_path, tmp_path / "missing.pt", tmp_path / "o.zarr", progress=False)
    with pytest.raises(CubeError, match="no such cube"):
        embed_cube(tmp_path / "nope.zarr", models["s2"], tmp_path / "o.zarr", progress=False)
    ds = _cube()
    swapped = ds.assign_coords(band=[*ds["band"].values[:8], "B12", "B11"])
    with pytest.raises(CubeError, match=r"out of the canonical order. Fix: ds = ds.sel\(band=\[.*'B11', 'B12'\]\)"):
        embed_cube(swapped, models["s2"], tmp_path / "o.zarr", scheduler="synchronous", progress=False)
    # The data model is checked before any block: these would otherwise embed into meaningless numbers.
    with pytest.raises(CubeError, match=r"s2 looks like unscaled digital numbers .* Fix: divide by 10000"):
        embed_cube(ds.assign(s2=ds["s2"] * 10000), models["s2"], tmp_path / "o.zarr", scheduler="synchronous",
                   progress=False)
    with pytest.raises(CubeError, match=r"dates in 'time' are not sorted. Fix: ds = ds.sortby\('time'\)"):
        embed_cube(ds.isel(time=[1, 0, *range(2, ds.sizes["time"])]), models["s2"], tmp_path / "o.zarr",
                   scheduler="synchronous", progress=False)
    with pytest.raises(CubeError, match=r"'y' increases .* Fix: ds = ds.isel\(y=slice\(None, None, -1\)\)"):
        embed_cube(ds.isel(y=slice(None, None, -1)), models["s2"], tmp_path / "o.zarr", scheduler="synchronous",
                   progress=False)
    with pytest.raises(CubeError, match=r"the cube is 1 x 1 px: the embedding's grid needs at least 2 pixels"):
        embed_cube(ds.isel(y=[0], x=[0]), models["s2"], tmp_path / "o.zarr", scheduler="synchronous", progress=False)
    assert not (tmp_path / "o.zarr").exists()  # refused before the store is created
    # A cube without some of the model's bands: selecting cannot fix it, so the message says so.
    with pytest.raises(EmbedError, match=r"missing \['B05', 'B06', 'B07', 'B8A', 'B11', 'B12'\].*Fix: the cube lacks .*"
                                         r"band_names: \['B02', 'B03', 'B04', 'B08'\]"):
        embed_cube(ds.sel(band=["B02", "B03", "B04", "B08"]), models["s2"], tmp_path / "o.zarr", scheduler="synchronous",
                   progress=False)
    with pytest.raises(CubeError, match="no 's1'.*fusion model needs"):
        embed_cube(ds.drop_vars(["s1", "time_s1", "band_s1"]), models["fusion"], tmp_path / "o.zarr",
                   scheduler="synchronous", progress=False)
    with pytest.raises(EmbedError, match="own sensor"):
        embed_cube(ds, models["s2"], tmp_path / "o.zarr", sensors="fused", progress=False)
    with pytest.raises(EmbedError, match="at least 11"):
        embed_cube(ds.isel(time=slice(0, 8)), models["s2"], tmp_path / "o.zarr", progress=False)
    with pytest.raises(EmbedError, match=r"dtype='int4'.*'float32'.*'float16'.*'int8'"):
        embed_cube(ds, models["s2"], tmp_path / "o.zarr", dtype="int4", progress=False)
    with pytest.raises(FileNotFoundError, match="no such embedding store"):
        open_embedding(tmp_path / "none.zarr")
    with pytest.raises(EmbedError, match="no 'embedding' variable"):
        open_embedding(cube_path)


def test_incompatible_existing_store_is_not_resumed(cube_path, models, tmp_path):
    out = embed_cube(cube_path, models["s2"], tmp_path / "o.zarr", block_px=24, scheduler="synchronous", progress=False)
    with pytest.raises(EmbedError, match="block_px"):
        embed_cube(cube_path, models["s2"], out, block_px=16, scheduler="synchronous", progress=False)
    embed_cube(cube_path, models["s2"], out, block_px=16, scheduler="synchronous", progress=False, overwrite=True)
    assert len(list((out / ".blocks").glob("*.done"))) == 9


def test_never_deletes_a_foreign_store(cube_path, models):
    with pytest.raises(EmbedError, match="not a latentcube embedding store"):
        embed_cube(cube_path, models["s2"], cube_path, overwrite=True, scheduler="synchronous", progress=False)
    assert (cube_path / "s2").exists()


def test_killed_process_resumes(cube_path, models, s2_emb, tmp_path):
    """SIGKILL (no cleanup, no exception handling) after 5 blocks; the re-run does exactly the other 4."""
    out = tmp_path / "killed.zarr"
    script = (
        "import os, signal, sys, torch\n"
        "from latentcube.embed import embed_cube\n"
        "torch.set_num_threads(1)\n"
        "n = []\n"
        "def hook(iy, ix):\n"
        "    n.append(1)\n"
        "    if len(n) == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "embed_cube(sys.argv[1], sys.argv[2], sys.argv[3], block_px=16, scheduler='synchronous', progress=False,\n"
        "           on_block=hook)\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(cube_path), str(models["s2"]), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, res.stderr
    assert len(list((out / ".blocks").glob("*.done"))) == 5
    again: list[tuple[int, int]] = []
    embed_cube(cube_path, models["s2"], out, block_px=16, scheduler="synchronous", progress=False,
               on_block=lambda iy, ix: again.append((iy, ix)))
    assert len(again) == 4
    np.testing.assert_allclose(xr.open_zarr(out)["embedding"].values, xr.open_zarr(s2_emb)["embedding"].values,
                               rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(cube_path, models, fused_emb, tmp_path):
    out = embed_cube(cube_path, models["fusion"], tmp_path / "gpu.zarr", block_px=16, sensors=("fused", "s1", "s2"),
                     device="cuda", scheduler="synchronous", progress=False)
    np.testing.assert_allclose(xr.open_zarr(out)["embedding"].values, xr.open_zarr(fused_emb)["embedding"].values,
                               rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_model_of_fewer_bands_reads_its_own_from_a_fuller_cube(cube_path, tmp_path):
    """A 4-band model on the 10-band cube: the same store as on the cube reduced to those 4 bands (quality
    layer included), with no reduced copy needed."""
    four = ("B02", "B03", "B04", "B08")
    model = save_model(tmp_path / "four.pt", _sensor(s2_config(n_bands=4, band_names=four), 5),
                       normalization=Normalization())
    kw = dict(block_px=24, quality=True, scheduler="synchronous", progress=False)
    full = xr.open_zarr(embed_cube(cube_path, model, tmp_path / "full.zarr", **kw))
    reduced = xr.open_zarr(embed_cube(_cube().sel(band=list(four)), model, tmp_path / "reduced.zarr", **kw))
    for name in ("embedding", "quality_s2"):
        np.testing.assert_array_equal(full[name].values, reduced[name].values)
    assert np.isfinite(full["embedding"].values).any()
    np.testing.assert_allclose(embed_pixels(cube_path, model, slice(3, 6), slice(30, 33)).values,
                               reduced["embedding"].isel(y=slice(3, 6), x=slice(30, 33)).values, rtol=0, atol=1e-6)


def test_in_memory_dataset_matches_path_and_leaves_the_process_as_found(models, s2_emb, tmp_path):
    """The default scheduler runs a one-block cube in this process with 1 torch thread: afterwards the
    caller's thread count, matplotlib backend, malloc settings and the module caches are as before."""
    import matplotlib

    from latentcube import heap
    from latentcube.embed import _compute

    ds = _cube()
    backend, malloc = matplotlib.get_backend(), heap.heap_settings()
    torch.set_num_threads(2)  # the caller's choice (the module fixture restores its own afterwards)
    try:
        out = embed_cube(ds, models["s2"], tmp_path / "mem.zarr", block_px=40, threads_per_worker=1, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert matplotlib.get_backend() == backend and heap.heap_settings() == malloc
    assert _compute._MODELS == {} and _compute._CUBES == {}
    np.testing.assert_allclose(xr.open_zarr(out)["embedding"].values, xr.open_zarr(s2_emb)["embedding"].values,
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds["s2"].values, _cube()["s2"].values)  # preprocessing never writes into the input


def test_call_scope_restores_threads_tf32_malloc_and_caches():
    """What a block may change in the process that runs it (GPU runs turn TF32 off) is undone on return."""
    from latentcube import heap
    from latentcube.embed import _compute

    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    malloc = heap.heap_settings()
    with _compute.call_scope():
        torch.set_num_threads(3)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32[0]
        heap.reuse_large_blocks()
        _compute._MODELS["k"] = ("model", {})
    assert torch.get_num_threads() == 1 and (torch.backends.cudnn.allow_tf32,
                                             torch.backends.cuda.matmul.allow_tf32) == tf32
    assert heap.heap_settings() == malloc and _compute._MODELS == {}


# ------------------------------------------------------------------------------------ quality layer

SPAN = {"s2": np.array([Normalization().s2[b][1] - Normalization().s2[b][0] for b in _cube()["band"].values]),
        "s1": np.array([Normalization().s1_db[b][1] - Normalization().s1_db[b][0] for b in ("VV", "VH")])}


def _physical(values: np.ndarray, sensor: str) -> np.ndarray:
    """Normalised values (..., C) -> reflectance or dB, through the library's inverse (S1 via linear power)."""
    bands = list(_cube()["band"].values) if sensor == "s2" else ["VV", "VH"]
    out = Normalization().denormalize_array(values, bands, sensor, axis=-1).astype("float64")
    return 10 * np.log10(out) if sensor == "s1" else out


def _mae(recon: np.ndarray, target: np.ndarray, sensor: str) -> float:
    """Mean over the finite bands of |recon - target| in physical units; NaN when no band is finite."""
    d = np.abs(_physical(recon, sensor) - _physical(target, sensor))
    return float(np.nanmean(d)) if np.isfinite(d).any() else np.nan


def _window(t: int, n_total: int) -> int:
    """First date of target t's window, written out: t - 5, kept inside the series."""
    return min(max(t - CENTRE, 0), n_total - N_DATES)


def _unmasked_dense(model, inputs: dict[str, np.ndarray], times: np.ndarray, which: str) -> torch.Tensor:
    days = torch.tensor(_days(times), dtype=torch.float32)
    x = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        return model.encode_scene(x if which == "fused" else x[which], days, tile=None)


@pytest.mark.parametrize("kind", [pytest.param("fusion", marks=pytest.mark.slow), "s1"])
def test_quality_equals_public_decoder_on_window_embeddings(cube_path, models, fused_emb, tmp_path, kind):
    """quality_<s>[t, y, x] = MAE of decode(dense embeddings of t's 11 window dates)[t's position, centre pixel],
    with the public ``decode`` (all 11 dates, whole patch): checks the 11x cheaper target-date path, the window
    gathering at the series ends, the units and the NaN layout. Tolerance: float32 summation order only."""
    ds = _cube()
    model, _ = _load(models[kind])
    pixels = PIXELS
    if kind == "fusion":
        out, inputs, times = fused_emb, _reference_inputs(ds), ds["time"].values
        dense, sensors = _unmasked_dense(model, inputs, times, "fused"), ("s2", "s1")
    else:  # an S1 autoencoder: its own (smoothed) acquisition dates; a 24 x 24 corner keeps the test fast
        ds = ds.isel(y=slice(0, 24), x=slice(0, 24))
        pixels = [(y, x) for y, x in PIXELS if y < 24 and x < 24] + [(23, 23), (23, 5)]
        out = embed_cube(ds, models["s1"], tmp_path / "q1.zarr", block_px=16, quality=True,
                         scheduler="synchronous", progress=False)
        inputs = {"s1": Normalization().normalize_array(smooth_s1(ds)["s1"].values, ["VV", "VH"], "s1")}
        times = ds["time_s1"].values
        dense, sensors = _unmasked_dense(model, inputs, times, "s1"), ("s1",)
    got = xr.open_zarr(out)
    assert sorted(v for v in got.data_vars if v.startswith("quality_")) == sorted(f"quality_{s}" for s in sensors)
    attrs = got["quality_s1"].attrs
    assert attrs["units"] == "dB" and "mean absolute error" in attrs["long_name"]
    if kind == "fusion":
        assert got["quality_s2"].attrs["units"] == "1" and "reflectance" in got["quality_s2"].attrs["long_name"]
    n_total = len(times)
    days = torch.tensor(_days(times), dtype=torch.float32)
    dates = [0, 2, 5, 8, n_total - 3, n_total - 1]  # both series ends: windows shifted inside the series
    checked = 0
    for t in dates:
        s0 = _window(t, n_total)
        zw = dense[s0 : s0 + N_DATES, :, [p[0] for p in pixels], [p[1] for p in pixels]]  # (11, L, pixels)
        with torch.no_grad():
            rec = model.decode(zw.permute(2, 0, 1), days[s0 : s0 + N_DATES].expand(len(pixels), -1))
        for s in sensors:
            r = (rec[s] if kind == "fusion" else rec)[:, t - s0, :, R, R].numpy()  # (pixels, C)
            for i, (y, x) in enumerate(pixels):
                ref = _mae(r[i], inputs[s][t, :, y, x], s)
                value = float(got[f"quality_{s}"].values[t, y, x])
                if np.isnan(ref):
                    assert np.isnan(value), (s, t, y, x)
                else:
                    assert value == pytest.approx(ref, rel=1e-4, abs=1e-5), (s, t, y, x)
                    checked += 1
    assert checked > 0.7 * len(dates) * len(pixels) * len(sensors)
    for s in sensors:  # NaN exactly where every band of that sensor's input is missing
        np.testing.assert_array_equal(np.isnan(got[f"quality_{s}"].values), _invalid(inputs[s]))


@pytest.mark.slow
def test_quality_with_one_window_equals_per_patch_forward(cube_path, models, tmp_path):
    """With exactly 11 dates every date's window is the whole series, so the dense embeddings of a window
    are the per-patch encoder's latents of that patch (<= 1e-5, tested above) and the quality layer must
    equal the reconstruction of ``forward`` on the extracted patch. Tolerance: the latents' 1e-5 through
    the decoder (gain O(1) for these weights) plus float32 rounding of the physical conversion."""
    ds = _cube().isel(time=slice(0, N_DATES), y=slice(0, 24), x=slice(0, 24))
    pixels = [(0, 0), (0, 23), (23, 0), (23, 23), (12, 12), (5, 17), (16, 3), (15, 16), (8, 9)]
    out = embed_cube(ds, models["fusion"], tmp_path / "one.zarr", block_px=16, quality=True, scheduler="synchronous",
                     progress=False)
    got = xr.open_zarr(out)
    model, _ = _load(models["fusion"])
    inputs = _reference_inputs(ds)
    days = torch.tensor(_days(ds["time"].values), dtype=torch.float32).expand(len(pixels), -1)
    padded = {k: np.pad(v, ((0, 0), (0, 0), (R, R), (R, R)), constant_values=np.nan) for k, v in inputs.items()}
    x = {k: torch.from_numpy(np.stack([v[:, :, y : y + P, xx : xx + P] for y, xx in pixels])) for k, v in padded.items()}
    with torch.no_grad():
        rec = model(x, days).reconstructions  # sensor -> (pixels, 11, C, 15, 15)
    diffs = []
    for s in ("s2", "s1"):
        r = rec[s][:, :, :, R, R].numpy()
        for i, (y, xx) in enumerate(pixels):
            for t in range(N_DATES):
                ref, value = _mae(r[i, t], inputs[s][t, :, y, xx], s), float(got[f"quality_{s}"].values[t, y, xx])
                assert np.isnan(ref) == np.isnan(value), (s, t, y, xx)
                if np.isfinite(ref):
                    diffs.append(abs(value - ref) / max(abs(ref), 1e-3))
    assert len(diffs) > 120 and max(diffs) < 1e-4, max(diffs)


@pytest.mark.parametrize("linear_paths", [True, False])
def test_decode_centre_equals_decode_at_the_target_date(linear_paths):
    """``SensorDecoder.decode_centre`` (the quality layer's cheap path) equals the public ``decode``'s centre
    pixel: at the centre date by default, at any (sequence, date) pair asked, with the decoder's own and
    with the folded inference blocks. Tolerance: float32 summation order."""
    model = _sensor(s2_config(linear_paths=linear_paths), 6)
    dec = model.decoder
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, N_DATES, 9, generator=gen)
    days = torch.cumsum(torch.rand(5, N_DATES, generator=gen) * 12, 1)
    rows, dates = torch.tensor([0, 1, 2, 2, 4, 3]), torch.tensor([0, 5, 10, 3, 7, 5])
    with torch.no_grad():
        full = model.decode(z, days)  # (5, 11, C, 15, 15)
        np.testing.assert_allclose(dec.decode_centre(z, days).numpy(), full[:, CENTRE, :, R, R].numpy(), rtol=1e-5,
                                   atol=1e-6)
        want = full[rows, dates, :, R, R].numpy()
        assert np.abs(want).max() > 0.1  # a decoder that responds (default init, not near-zero output layers)
        np.testing.assert_allclose(dec.decode_centre(z, days, rows, dates).numpy(), want, rtol=1e-5, atol=1e-6)
        blocks = dec.inference_blocks()
        assert any(isinstance(m, torch.nn.Conv2d) for m in blocks[0].modules())  # folded: no transposed conv
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for b in blocks for m in b.modules())
        np.testing.assert_allclose(dec.decode_centre(z, days, rows, dates, blocks=blocks).numpy(), want, rtol=1e-4,
                                   atol=1e-5)


# ------------------------------------------------------------------------------------------- int8


def test_int8_within_documented_error(cube_path, models, s2_emb, tmp_path):
    out = embed_cube(cube_path, models["s2"], tmp_path / "i8.zarr", block_px=24, dtype="int8",
                     scheduler="synchronous", progress=False)
    raw = xr.open_zarr(out, mask_and_scale=False)
    assert raw["embedding"].dtype == np.int8 and raw["embedding"].attrs["_FillValue"] == -128
    assert raw["embedding_scale"].dims == ("time", "y", "x") and raw["embedding_scale"].dtype == np.float32
    codes, scale = raw["embedding"].values, raw["embedding_scale"].values
    full = xr.open_zarr(s2_emb)["embedding"].values  # the float32 run of the same model
    invalid = np.isnan(full).all(axis=1)
    assert invalid.any() and (codes[np.broadcast_to(invalid[:, None], codes.shape)] == -128).all()
    assert np.isnan(scale[invalid]).all() and (codes[~np.broadcast_to(invalid[:, None], codes.shape)] >= -127).all()
    # scale = max |e| / 127 over the features of each pixel-date: the largest value uses the full code range
    np.testing.assert_allclose(scale[~invalid], np.abs(full).max(axis=1)[~invalid] / 127, rtol=1e-6)
    assert (np.abs(codes.astype(int)).max(axis=1)[~invalid] == 127).all()
    import rioxarray  # noqa: F401  (the .rio accessor)

    dec = open_embedding(out)
    assert dec.dtype == np.float32 and dec.dims == ("time", "feature", "y", "x") and dec.rio.crs.to_epsg() == 32632
    e = dec.values
    np.testing.assert_array_equal(np.isnan(e), np.isnan(full))
    ok = np.isfinite(full)
    err = np.abs(e - full)[ok]
    bound = np.broadcast_to(scale[:, None], full.shape)[ok]
    assert (err <= bound * (0.5 + 1e-5)).all()  # the documented bound: scale / 2 (+ float32 rounding)
    assert err.max() > 0.3 * bound[err.argmax()]  # and it is a real rounding, not an exact copy
    # Gap-filling writes a new float32 store: it must not describe itself as int8, nor as unfinished blocks.
    from latentcube.embed import embedding_summary
    from latentcube.gapfill import gapfill_embeddings

    assert embedding_summary(out)["stored_as"] == "int8 x embedding_scale"
    filled = tmp_path / "filled.zarr"
    gapfill_embeddings(out, out=filled, freq="5D", progress=False)
    info = embedding_summary(filled)
    assert info["stored_as"] == "float32" and "blocks_written" not in info
    stored = xr.open_zarr(filled)
    assert stored.attrs["geoemb:data_type"] == "float32" and "block_px" not in stored.attrs
    assert stored["embedding"].dtype == np.float32


def test_quantize_int8_hand_computed():
    e = np.array([[0.5, -1.27, 0.004], [np.nan] * 3, [0.0, 0.0, 0.0]], dtype="float32").T[None, :, :, None]  # (1, 3, 3, 1)
    q, scale = quantize_int8(e)
    np.testing.assert_allclose(scale[0, :, 0], [0.01, np.nan, 0.0], rtol=1e-7)
    np.testing.assert_array_equal(q[0, :, :, 0].T, [[50, -127, 0], [-128, -128, -128], [0, 0, 0]])


def test_open_embedding_float_types(fused_emb, s2_emb, cube_path, models, tmp_path):
    e = open_embedding(fused_emb)
    np.testing.assert_array_equal(e.values, xr.open_zarr(fused_emb)["embedding"].values)
    assert e.dtype == np.float32 and "quality_s2" not in e.coords
    half = embed_cube(cube_path, models["s2"], tmp_path / "h.zarr", block_px=24, dtype="float16", scheduler="synchronous",
                      progress=False)
    h = open_embedding(half)
    assert h.dtype == np.float32
    np.testing.assert_array_equal(h.values, xr.open_zarr(half)["embedding"].values.astype("float32"))


def test_cli_embed_quality_and_int8(cube_path, models, tmp_path, capsys):
    from latentcube.cli import main

    out = tmp_path / "cli.zarr"
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(cube_path), "--checkpoint", str(models["s2"]), "--out", str(out), "--block-px", "40",
              "--dtype", "int8", "--quality", "--scheduler", "synchronous"])
    assert exc.value.code == 0
    ds = xr.open_zarr(out)
    assert ds["embedding"].dtype == np.float32  # CF-decoded codes; open_embedding applies the scale
    assert set(ds.data_vars) == {"embedding", "embedding_scale", "quality_s2"}
    assert json.loads(ds.attrs["quality"]) == ["s2"] and ds.attrs["geoemb:data_type"] == "int8"
    printed = capsys.readouterr()  # the store's path on stdout; the all-cloud date of the cube named on stderr
    assert printed.out.strip().endswith(out.name)
    assert ("note: 1 of the store's dates have no valid pixel (cloud or nodata over the whole cube): 2020-04-15. They "
            "are kept, all NaN") in printed.err


def test_cli_info_describes_an_embedding_store(s2_emb, tmp_path, capsys):
    import shutil

    from latentcube.cli import main

    def info(path):
        with pytest.raises(SystemExit) as exc:
            main(["info", str(path), "--json"])
        assert exc.value.code == 0
        return json.loads(capsys.readouterr().out)

    got = info(s2_emb)
    emb = open_embedding(s2_emb).values
    valid = np.isfinite(emb).all(axis=1).mean(axis=(1, 2))  # independent: per date, over pixels
    assert got["valid"].startswith("embedding store") and got["model"].startswith("autoencoder (")
    assert got["features"] == [f"s2_{i}" for i in range(9)] and got["dates"] == T2
    assert got["first"] == "2020-03-01" and got["axis"] == "Sentinel-2 acquisitions"
    assert got["stored_as"] == "float32" and got["blocks_written"] == "4 of 4"  # 40 x 40 px in 24-px blocks
    assert got["valid_fraction_mean"] == pytest.approx(valid.mean(), abs=1e-9)
    assert got["dates_valid_ge_50pct"] == int((valid >= 0.5).sum())
    empty = [str(pd.Timestamp(t).date()) for t, v in zip(open_embedding(s2_emb)["time"].values, valid, strict=True)
             if v == 0]
    assert got["dates_without_valid_pixel"] == empty == dates_without_valid_pixel(s2_emb)
    # a date under cloud everywhere: named by info and by the helper `latentcube embed` prints from
    import zarr

    cloudy = shutil.copytree(s2_emb, tmp_path / "cloudy.zarr")
    zarr.open_array(cloudy / "embedding", mode="r+")[2] = np.nan
    day = str(pd.Timestamp(open_embedding(cloudy)["time"].values[2]).date())
    assert dates_without_valid_pixel(cloudy) == sorted({*empty, day})
    assert day in info(cloudy)["dates_without_valid_pixel"]
    with pytest.raises(SystemExit):
        main(["info", str(cloudy)])
    table = capsys.readouterr().out
    assert "dates without data" in table and f"{len(empty) + 1} (all NaN: cloud or nodata everywhere)" in table
    # one block's marker gone: the store says it is incomplete and how to finish it
    part = shutil.copytree(s2_emb, tmp_path / "part.zarr")
    next((part / ".blocks").glob("*.done")).unlink()
    assert info(part)["blocks_written"] == "3 of 4 (incomplete: re-run the same embed command to finish)"
    # validate (the input-cube check) names what the store is
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(s2_emb)])
    assert exc.value.code == 1
    assert "this is an embedding store (the output of `latentcube embed`), not an input cube" in capsys.readouterr().err
