"""Patch sampling: strides, frame counts, reproducibility, bounds, splits and the rejection rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from latentcube.cube import CubeError, new_cube, save_cube
from latentcube.sampling import (
    BlockShuffleSampler,
    FusionPatchDataset,
    PatchDataset,
    SamplingConfig,
    candidate_origins,
    nearest_s1_index,
)
from latentcube.splits import assign_splits, spatial_split


def write_cube(path, *, n_time=45, size=40, seed=0, cloud=None, n_s1=None):
    """A cube whose S2 value encodes (time, band, y, x) so that cut patches can be checked exactly."""
    t, b, y, x = np.meshgrid(np.arange(n_time), np.arange(10), np.arange(size), np.arange(size), indexing="ij")
    s2 = (0.001 * t + 0.0001 * b + 0.00001 * (y * size + x) / size).astype("float32")
    if cloud is not None:
        s2[cloud] = np.nan
    kw = {}
    if n_s1:
        s1 = np.broadcast_to(np.arange(n_s1, dtype="float32")[:, None, None, None] * 0.01 + 0.01, (n_s1, 2, size, size))
        kw = {"s1": s1.copy(), "time_s1": pd.date_range("2020-01-02", periods=n_s1, freq="6D")}
    ds = new_cube(
        s2=s2, time=pd.date_range("2020-01-01", periods=n_time, freq="5D"),
        y=1000.0 - 10 * np.arange(size), x=10.0 * np.arange(size), crs="EPSG:32632", **kw,
    )
    return save_cube(ds, path)


def test_candidate_origins_follow_the_paper_strides():
    cfg = SamplingConfig.paper("s2")
    t0, y0, x0 = candidate_origins(73, 64, 50, cfg)
    assert list(t0) == [0, 17, 34, 51]  # 51 + 20 = 71 <= 73; 68 + 20 > 73
    assert list(y0) == [0, 9, 18, 27, 36, 45]  # 45 + 15 = 60 <= 64
    assert list(x0) == [0, 9, 18, 27]
    s1 = SamplingConfig.paper("s1")
    assert (s1.seq_len, s1.time_stride, s1.space_stride, s1.n_frames) == (40, 40, 15, 11)
    t0, y0, _ = candidate_origins(121, 45, 45, s1)
    assert list(t0) == [0, 40, 80] and list(y0) == [0, 15, 30]
    with pytest.raises(ValueError, match="unknown stage"):
        SamplingConfig.paper("s3")


def test_patches_are_exact_cuts_with_11_sorted_frames_inside_the_sequence(tmp_path):
    path = write_cube(tmp_path / "a.zarr")
    ds = PatchDataset([path], seed=1)
    assert len(ds) == 2 * 3 * 3
    for i in range(len(ds)):
        c = ds.candidates[i]
        item = ds[i]
        frames = np.asarray(c.frames)
        assert item["x"].shape == (11, 10, 15, 15)
        assert len(set(frames)) == 11 and np.all(np.diff(frames) > 0)
        assert c.t0 <= frames.min() and frames.max() < c.t0 + 20
        assert 0 <= c.y0 <= 40 - 15 and 0 <= c.x0 <= 40 - 15
        # value encodes its own coordinates: check the first and last element exactly
        t, yy, xx = frames[0], c.y0, c.x0
        assert item["x"][0, 0, 0, 0].item() == pytest.approx(0.001 * t + 0.00001 * (yy * 40 + xx) / 40, abs=1e-7)
        t, yy, xx = frames[-1], c.y0 + 14, c.x0 + 14
        assert item["x"][-1, 9, 14, 14].item() == pytest.approx(0.001 * t + 0.0009 + 0.00001 * (yy * 40 + xx) / 40, abs=1e-7)
        np.testing.assert_allclose(item["days"].numpy(), 5.0 * (frames - frames[0]))


def test_sample_count_matches_strides(tmp_path):
    path = write_cube(tmp_path / "a.zarr", n_time=45, size=40)
    ds = PatchDataset([path])
    # 45 dates: sequences at 0 and 17 (34 + 20 > 45); 40 px: origins 0, 9, 18 (27 + 15 > 40)
    assert len(ds) == 2 * 3 * 3 and ds.n_rejected == 0


def test_same_seed_same_samples_other_seed_other_frames(tmp_path):
    path = write_cube(tmp_path / "a.zarr")
    a, b, c = (PatchDataset([path], seed=s) for s in (5, 5, 6))
    assert a.candidates == b.candidates
    assert [x.frames for x in a.candidates] != [x.frames for x in c.candidates]
    a.set_epoch(3), b.set_epoch(3)
    torch.testing.assert_close(a[4]["x"], b[4]["x"], equal_nan=True)
    # a new epoch draws new frames (temporal augmentation) ...
    assert not np.array_equal(a.frames_for(4), np.asarray(a.candidates[4].frames))
    # ... unless redraw is off
    d = PatchDataset([path], seed=5, redraw=False)
    d.set_epoch(3)
    assert np.array_equal(d.frames_for(4), np.asarray(d.candidates[4].frames))


def test_rejection_rules_centre_pixel_and_valid_fraction(tmp_path):
    cloud = np.zeros((45, 10, 40, 40), bool)
    cloud[:, :, 7, 7] = True  # centre of every patch at origin (0, 0) is always invalid
    cloud[:, :, :, 26:] = True  # right part cloudy: patches at x0 = 18 keep 8 of 15 columns (53 %)
    path = write_cube(tmp_path / "a.zarr", cloud=cloud)
    ds = PatchDataset([path], config=SamplingConfig(min_valid_fraction=0.6))
    origins = {(c.y0, c.x0) for c in ds.candidates}
    assert (0, 0) not in origins  # centre never valid
    assert all(x0 != 18 for _, x0 in origins)  # 53 % valid < 60 %
    assert (9, 9) in origins
    for i in range(len(ds)):
        x = ds[i]["x"].numpy()
        assert np.isfinite(x[5, :, 7, 7]).all()
        assert np.isfinite(x).mean() >= 0.6
    # a looser threshold keeps the partially cloudy column
    loose = PatchDataset([path], config=SamplingConfig(min_valid_fraction=0.5))
    assert any(c.x0 == 18 for c in loose.candidates)


def test_fully_cloudy_cube_gives_a_clear_error(tmp_path):
    path = write_cube(tmp_path / "a.zarr", cloud=(slice(None), slice(None), slice(None), slice(None)))
    # 45 dates, 40 px: sequence starts 0 and 17, origins 0/9/18 on both axes -> 18 candidates
    with pytest.raises(CubeError, match=r"no s2 patch passed the sampling rules in 1 cube\(s\) \(centre valid, "
                                        r">= 30% valid context\): a.zarr: all 18 candidate patches rejected; 0% of its "
                                        r"s2 pixel-dates are valid \(0 of 45 dates >= 50 % valid\)\. Fix: this is "
                                        r"too cloudy for 11-frame samples"):
        PatchDataset([path])


def test_empty_sampling_error_says_what_stopped_each_cube(tmp_path):
    # clear only on dates 0-4: every 11-frame window is mostly cloud (<= 5 of 11 frames valid < 60 %)
    mostly = write_cube(tmp_path / "mostly.zarr", cloud=(slice(5, None), slice(None), slice(None), slice(None)))
    short = write_cube(tmp_path / "short.zarr", n_time=10)
    with pytest.raises(CubeError) as err:
        PatchDataset([mostly, short], config=SamplingConfig(min_valid_fraction=0.6))
    msg = str(err.value)
    assert "in 2 cube(s)" in msg and ">= 60% valid context" in msg
    assert "mostly.zarr: all 18 candidate patches rejected; 11% of its s2 pixel-dates are valid (5 of 45 dates" in msg
    assert "short.zarr has 10 s2 dates, fewer than the 11 frames a sample draws" in msg
    # one fix per cause, each once: the mostly cloudy cube cannot be fixed by a lower threshold
    fixes = msg.split(". Fix: ")[1]
    assert fixes.startswith("this is too cloudy for 11-frame samples (at most 5 of any 20 consecutive dates are "
                            ">= 50 % valid, and a sample's middle frame must be clear)")
    assert "a lower data.sampling.min_valid_fraction does not help here" in fixes
    assert "; add dates, or give every stage model: {n_dates: N} and data.sampling: {n_frames: N} with N <= 10" in fixes
    with pytest.raises(CubeError, match="does not help here"):  # true: the lowest threshold gives nothing either
        PatchDataset([mostly], config=SamplingConfig(min_valid_fraction=0.05))
    # clear on dates 0-7: a strict threshold rejects every patch, and the fix it names (a lower one) works
    eight = write_cube(tmp_path / "eight.zarr", cloud=(slice(8, None), slice(None), slice(None), slice(None)))
    with pytest.raises(CubeError, match=r"Fix: lower data.sampling.min_valid_fraction \(now 0.9\), raise "
                                        r"data.sampling.seq_len"):
        PatchDataset([eight], config=SamplingConfig(min_valid_fraction=0.9))
    assert len(PatchDataset([eight], config=SamplingConfig(min_valid_fraction=0.3))) > 0
    # a region narrower than one patch (regions normally come from spatial_split, which checks this first)
    with pytest.raises(CubeError, match=r"mostly.zarr: its 40 x 10 px region is smaller than one 15-px patch"):
        PatchDataset([mostly], regions=[(slice(None), slice(0, 10))])
    # a cube that gives samples is not listed when another one fails
    good = write_cube(tmp_path / "good.zarr")
    assert len(PatchDataset([good, short])) == 18


def test_block_sampler_is_a_permutation_grouped_by_block_and_seeded(tmp_path):
    paths = [write_cube(tmp_path / f"{i}.zarr", size=48, seed=i) for i in range(2)]
    ds = PatchDataset(paths, config=SamplingConfig(block_px=16))
    s = BlockShuffleSampler(ds, seed=3)
    order = list(s)
    assert sorted(order) == list(range(len(ds)))
    keys = [ds.block_key(i) for i in order]
    # each block appears as one contiguous run
    runs = [k for j, k in enumerate(keys) if j == 0 or keys[j - 1] != k]
    assert len(runs) == len(set(keys))
    assert order == list(BlockShuffleSampler(ds, seed=3))
    s.set_epoch(1)
    assert list(s) != order
    # two DDP ranks split the blocks without overlap
    l0, l1 = (list(BlockShuffleSampler(ds, seed=3, num_replicas=2, rank=r)) for r in (0, 1))
    assert len(l0) == len(l1)  # equal step counts, or DDP deadlocks
    assert set(l0) | set(l1) == set(range(len(ds)))
    # blocks are not shared between ranks; only padding repeats a rank's own items
    assert not {ds.block_key(i) for i in l0} & {ds.block_key(i) for i in l1}


def test_dataloader_with_workers_gives_the_same_batches(tmp_path):
    path = write_cube(tmp_path / "a.zarr")
    ds = PatchDataset([path], seed=0)
    ref = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4, sampler=BlockShuffleSampler(ds, seed=0))])
    par = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4, sampler=BlockShuffleSampler(ds, seed=0), num_workers=2)])
    torch.testing.assert_close(ref, par, equal_nan=True)


def test_fusion_dataset_matches_s1_to_s2_dates(tmp_path):
    path = write_cube(tmp_path / "a.zarr", n_time=30, n_s1=25)
    ds = FusionPatchDataset([path], seed=0, config=SamplingConfig.paper("fusion", s1_smoothing=1))
    item = ds[0]
    assert item["s2"].shape == (11, 10, 15, 15) and item["s1"].shape == (11, 2, 15, 15)
    frames = np.asarray(ds.candidates[0].frames)
    s2_days = 5.0 * frames + 0  # S2 every 5 days from day 0; S1 every 6 days from day 1
    s1_days = 1 + 6.0 * np.arange(25)
    for k, d in enumerate(s2_days):
        j = np.argmin(np.abs(s1_days - d))
        expected = 0.01 * j + 0.01 if abs(s1_days[j] - d) <= 6 else np.nan
        np.testing.assert_allclose(item["s1"][k, :, 3, 3].numpy(), expected, rtol=1e-6)


def test_nearest_s1_index_ties_and_gaps():
    s2 = pd.to_datetime(["2020-01-01", "2020-01-04", "2020-01-20"])
    s1 = pd.to_datetime(["2020-01-02", "2020-01-06"])
    # Jan 4 is 2 days from both: the earlier acquisition wins; Jan 20 is 14 days away: no match
    assert list(nearest_s1_index(s2, s1, 6)) == [0, 0, -1]
    assert list(nearest_s1_index(s2, s1[:0], 6)) == [-1, -1, -1]


def test_splits_from_plan_and_lists(tmp_path):
    cubes = [tmp_path / f"site{i}_p1.zarr" for i in range(3)]
    plan = pd.DataFrame({"cube_id": ["site0_p1", "site1_p1", "site2_p1"], "split": ["train", "val", "train"]})
    out = assign_splits(cubes, plan=plan)
    assert out == {"train": [cubes[0], cubes[2]], "val": [cubes[1]]}
    with pytest.raises(ValueError, match="in two splits"):
        assign_splits(cubes, splits={"train": ["site0_p1", "site1_p1"], "val": ["site1_p1", "site2_p1"]})
    bad = pd.concat([plan, pd.DataFrame({"cube_id": ["site0_p1"], "split": ["test"]})])
    with pytest.raises(ValueError, match="in two splits in the plan"):
        assign_splits(cubes, plan=bad)
    with pytest.raises(ValueError, match=r"^2 of 3 cubes have no split: \['site1_p1', 'site2_p1'\] \(1 of the 1 ids in "
                                         r"the split lists match a cube; a cube's id is its file name without \.zarr\)"):
        assign_splits(cubes, splits={"train": ["site0_p1"]})
    many = [tmp_path / f"other{i}.zarr" for i in range(7)]  # a plan of other sites: none matches, all named
    with pytest.raises(ValueError, match=r"^7 of 7 cubes have no split: .* and 2 more \(0 of the 3 ids in the plan"):
        assign_splits(many, plan=plan)
    with pytest.raises(ValueError, match=r"unknown split name\(s\) \['valid'\]: the splits are train, val and test"):
        assign_splits(cubes, splits={"train": ["site0_p1", "site2_p1"], "valid": ["site1_p1"]})


def test_spatial_split_strips_by_hand():
    # 100 columns, val 0.2 and test 0.1: train 0..70, val 70..90, test 90..100 (edges at 0.7, 0.9 of 100).
    out = spatial_split(40, 100, {"val": 0.2, "test": 0.1}, patch=5)
    assert out == {"train": (slice(0, 40), slice(0, 70)), "val": (slice(0, 40), slice(70, 90)),
                   "test": (slice(0, 40), slice(90, 100))}
    rows = spatial_split(50, 30, {"val": 0.25}, patch=5, axis="y")  # 37.5 rounds to 38 (half to even)
    assert rows == {"train": (slice(0, 38), slice(0, 30)), "val": (slice(38, 50), slice(0, 30))}
    with pytest.raises(ValueError, match="the val strip is 6 px wide, less than one 15-px patch"):
        spatial_split(40, 64, {"val": 0.1})
    with pytest.raises(ValueError, match="together below 1"):
        spatial_split(40, 64, {"val": 0.6, "test": 0.4})
    with pytest.raises(ValueError, match=r"only 'val' and 'test' are held out"):
        spatial_split(40, 64, {"train": 0.5})
    with pytest.raises(ValueError, match="axis must be 'x'"):
        spatial_split(40, 64, {"val": 0.3}, axis="t")


@pytest.mark.parametrize(("shape", "fractions", "axis"), [
    ((64, 64), {"val": 0.2}, "x"), ((64, 64), {"val": 0.2, "test": 0.2}, "x"), ((200, 40), {"val": 0.05}, "y"),
])
def test_spatial_split_error_names_a_fraction_that_works(shape, fractions, axis):
    """The fix of a too-narrow held-out strip names fractions that then split the cube."""
    import re

    with pytest.raises(ValueError, match="strip is 1[03] px wide") as err:
        spatial_split(*shape, fractions, axis=axis)
    fixed = dict(re.findall(r"(val|test): ([0-9.]+)", str(err.value).split("data.spatial_split: ")[1]))
    assert set(fixed) == set(fractions)
    out = spatial_split(*shape, {k: float(v) for k, v in fixed.items()}, axis=axis)
    assert all(s[0 if axis == "y" else 1].stop - s[0 if axis == "y" else 1].start >= 15 for s in out.values())


def test_spatial_split_error_for_the_train_strip_names_the_other_axis_and_lower_fractions():
    with pytest.raises(ValueError, match=r"train strip is 14 px wide.*Fix: split along the other axis "
                                         r"\(data.spatial_split_axis: y: 64 px instead of 20\)"):
        spatial_split(64, 20, {"val": 0.3})
    with pytest.raises(ValueError, match=r"Fix: lower the held-out fractions \(together at most 0.75, each at least "
                                         r"0.25\), or use more cubes"):
        spatial_split(64, 64, {"val": 0.8})
    with pytest.raises(ValueError, match=r"Fix: use more cubes with cube-level splits \(data.splits or data.plan\)\.$"):
        spatial_split(20, 20, {"val": 0.3})


def test_patches_stay_inside_their_region_and_splits_share_no_pixel(tmp_path):
    import xarray as xr

    path = write_cube(tmp_path / "a.zarr", size=60)
    cube = xr.open_zarr(path)["s2"].values
    cfg = SamplingConfig(space_stride=4)
    strips = spatial_split(60, 60, {"val": 0.3}, patch=cfg.patch)  # train columns 0..42, val 42..60
    cover = {}
    for split, region in strips.items():
        ds = PatchDataset([path], config=cfg, seed=0, regions=[region], redraw=False)
        # The origin grid restarts at the strip's edge: train 0..24 (24 + 15 <= 42), val only 42 (18 px wide).
        assert sorted({c.x0 for c in ds.candidates}) == (list(range(0, 25, 4)) if split == "train" else [42])
        assert sorted({c.y0 for c in ds.candidates}) == list(range(0, 46, 4))
        mask = np.zeros((60, 60), bool)
        for i in range(len(ds)):
            c = ds.candidates[i]
            mask[c.y0 : c.y0 + cfg.patch, c.x0 : c.x0 + cfg.patch] = True
            expected = cube[list(c.frames), :, c.y0 : c.y0 + cfg.patch, c.x0 : c.x0 + cfg.patch]
            np.testing.assert_array_equal(ds[i]["x"].numpy(), expected)
        cover[split] = mask
    assert not (cover["train"] & cover["val"]).any()
    assert cover["train"][:59, :39].all() and not cover["train"][:, 39:].any()  # rows 0..58: origins 0..44
    assert cover["val"][:59, 42:57].all() and not cover["val"][:, :42].any()
    with pytest.raises(ValueError, match="2 regions given for 1 cubes"):
        PatchDataset([path], regions=[None, None])


def test_s1_is_smoothed_with_a_three_frame_rolling_mean_in_linear_scale(tmp_path):
    path = write_cube(tmp_path / "a.zarr", n_time=30, n_s1=25)
    raw = FusionPatchDataset([path], seed=0, config=SamplingConfig.paper("fusion", s1_smoothing=1))
    smooth = FusionPatchDataset([path], seed=0)
    ds = smooth._dataset(0)["s1"].isel(y=0, x=0, band_s1=0).values
    lin = 0.01 * np.arange(25) + 0.01
    # centred mean of three frames; ends average the two available frames
    expected = np.convolve(lin, np.ones(3) / 3, mode="same")
    expected[0], expected[-1] = lin[:2].mean(), lin[-2:].mean()
    np.testing.assert_allclose(ds, expected, rtol=1e-6)
    assert raw._dataset(0)["s1"].isel(y=0, x=0, band_s1=0).values[0] == pytest.approx(0.01)


def test_input_masking_hides_what_it_says_seeded_and_only_in_training(tmp_path):
    path = write_cube(tmp_path / "a.zarr")
    cfg = SamplingConfig(mask_pixels=0.25, mask_dates=0.2)
    a, b = (PatchDataset([path], seed=3, config=cfg) for _ in range(2))
    a.set_epoch(2), b.set_epoch(2)
    item = a[4]
    torch.testing.assert_close(item["x_in"], b[4]["x_in"], equal_nan=True)  # seeded
    hidden = torch.isnan(item["x_in"])
    assert not torch.isnan(item["x"]).any()  # the target keeps every value
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))  # a pixel-date is hidden in all bands
    per_date = hidden[:, 0].flatten(1).all(1)
    assert per_date.sum() == 2 and not per_date[5]  # int(0.2 * 10) whole dates, never the centre date
    share = hidden[~per_date, 0].float().mean().item()
    assert 0.15 < share < 0.35  # ~mask_pixels of the other pixel-dates
    torch.testing.assert_close(item["x_in"][~hidden], item["x"][~hidden])
    a.set_epoch(3)
    assert not torch.equal(torch.isnan(a[4]["x_in"]), hidden)  # redrawn every epoch
    assert "x_in" not in PatchDataset([path], seed=3, config=cfg, redraw=False)[4]  # validation: no masking
    assert "x_in" not in PatchDataset([path], seed=3)[4]  # off by default
    with pytest.raises(ValueError, match="mask_pixels=1.0: must be in"):
        SamplingConfig(mask_pixels=1.0)
