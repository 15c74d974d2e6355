"""Embedding cubes (issue 7): dense blocks equal the per-patch encoder, block/worker independence, resume,
NaN layout, metadata, and the output readable in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from latentcube.cube import CubeError, new_cube, save_cube
from latentcube.embed import EmbedError, block_grid, embed_cube
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
    return SensorAutoencoder(replace(cfg, **SMALL)).eval()


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
                      sensors=("fused", "s1", "s2"), scheduler="synchronous", progress=False)


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


def _patch(arr: np.ndarray, t: int, y: int, x: int) -> torch.Tensor:
    """The 11-date, 15 x 15 patch centred on (y, x) with target t at position 5; NaN outside the scene."""
    padded = np.pad(arr, ((0, 0), (0, 0), (R, R), (R, R)), constant_values=np.nan)
    return torch.from_numpy(padded[t - CENTRE : t + CENTRE + 1, :, y : y + P, x : x + P].copy())


def _days(times: np.ndarray) -> np.ndarray:
    return (pd.DatetimeIndex(times) - pd.DatetimeIndex(times)[0]).total_seconds().values / 86400.0


def _reference(model, inputs: dict[str, np.ndarray], times: np.ndarray, which: str) -> np.ndarray:
    """Per-patch embeddings (len(DATES), len(PIXELS), L) from ``encode_patches`` at position 5."""
    days = torch.tensor(_days(times), dtype=torch.float32)
    out = []
    with torch.no_grad():
        for t in DATES:
            d = days[t - CENTRE : t + CENTRE + 1].expand(len(PIXELS), -1)
            x = {k: torch.stack([_patch(v, t, y, xx) for y, xx in PIXELS]) for k, v in inputs.items()}
            if which == "fused":
                z = model.encode_patches(x, d)
            elif isinstance(model, FusionModel):
                z = model.sensors[which].encode_patches(x[which], d)
            else:
                z = model.encode_patches(x[which], d)
            out.append(z[:, CENTRE].numpy())
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


def test_block_size_does_not_change_the_result(cube_path, models, fused_emb, tmp_path):
    other = embed_cube(cube_path, models["fusion"], tmp_path / "f24.zarr", block_px=24, tile=16, **FUSED)  # tiles inside blocks too
    emb = xr.open_zarr(other)["embedding"]
    assert emb.encoding["chunks"] == (T2, 7, 24, 24)
    np.testing.assert_allclose(emb.values, _fused_only(fused_emb), rtol=0, atol=1e-6)  # only summation order


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_matches_in_process(cube_path, models, fused_emb, tmp_path, workers):
    done = []
    out = embed_cube(cube_path, models["fusion"], tmp_path / "dist.zarr", block_px=16, sensors=("fused", "s1", "s2"),
                     n_workers=workers, threads_per_worker=1, progress=False, on_block=lambda iy, ix: done.append((iy, ix)))
    assert sorted(done) == [(iy, ix) for iy in range(3) for ix in range(3)]
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, xr.open_zarr(fused_emb)["embedding"].values)


class _Stop(RuntimeError):
    pass


def _chunk_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "embedding").iterdir() if not p.name.startswith(".")}


def test_resume_after_interruption(cube_path, models, fused_emb, tmp_path):
    out = tmp_path / "resume.zarr"
    kw = dict(block_px=16, **FUSED)
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
        assert after[f"0.0.{iy}.{ix}"] == before[f"0.0.{iy}.{ix}"]
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, _fused_only(fused_emb))

    third: list[tuple[int, int]] = []  # a finished store: nothing left to do
    embed_cube(cube_path, models["fusion"], out, on_block=lambda iy, ix: third.append((iy, ix)), **kw)
    assert third == []


def test_block_written_but_not_marked_is_recomputed(cube_path, models, fused_emb, tmp_path, monkeypatch):
    """A kill between the region write and the marker leaves the block unmarked: the re-run redoes it."""
    import latentcube.embed as embed_mod

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
    np.testing.assert_array_equal(xr.open_zarr(out)["embedding"].values, _fused_only(fused_emb))


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
    with pytest.raises(EmbedError, match="wrong order"):
        embed_cube(swapped, models["s2"], tmp_path / "o.zarr", scheduler="synchronous", progress=False)
    with pytest.raises(CubeError, match="no 's1'.*fusion model needs"):
        embed_cube(ds.drop_vars(["s1", "time_s1", "band_s1"]), models["fusion"], tmp_path / "o.zarr",
                   scheduler="synchronous", progress=False)
    with pytest.raises(EmbedError, match="own sensor"):
        embed_cube(ds, models["s2"], tmp_path / "o.zarr", sensors="fused", progress=False)
    with pytest.raises(EmbedError, match="at least 11"):
        embed_cube(ds.isel(time=slice(0, 8)), models["s2"], tmp_path / "o.zarr", progress=False)
    with pytest.raises(EmbedError, match="float32"):
        embed_cube(ds, models["s2"], tmp_path / "o.zarr", dtype="int8", progress=False)


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


def test_in_memory_dataset_matches_path(models, s2_emb, tmp_path):
    out = embed_cube(_cube(), models["s2"], tmp_path / "mem.zarr", block_px=40, scheduler="synchronous", progress=False)
    np.testing.assert_allclose(xr.open_zarr(out)["embedding"].values, xr.open_zarr(s2_emb)["embedding"].values,
                               rtol=0, atol=1e-6)
