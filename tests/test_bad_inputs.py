"""What latentcube refuses: one table of bad inputs -> the message fragment the user must see.

Each row is one line: an id, a function of ``tmp_path`` that builds the bad input and runs the step a
user would run (a library call or the CLI through :func:`cli`), and a regular expression the message
must match. Every error must be a :class:`~latentcube.errors.LatentcubeError` (or a CLI usage error)
in the one-line "problem. Fix: ..." form: a ``KeyError`` or a traceback fails the row. Rows whose input
is accepted with a warning use :func:`warns`.

Adding a case: write (or reuse) a small fixture function below, then add one ``row(...)`` to ``CASES``.
docs/data-model.md ("What latentcube refuses, and why") lists the same cases for users.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentcube.cube import new_cube, open_cube, save_cube, validate_cube
from latentcube.errors import LatentcubeError
from latentcube.sources.fluxnet import read_fluxnet

# ------------------------------------------------------------------------------- how rows are run


class CliFailed(Exception):
    """The CLI exited non-zero; the message is what it printed on stderr."""


def cli(*args: object) -> str:
    """Run ``latentcube ARGS`` in-process as a user would; raise :class:`CliFailed` with its stderr when
    it exits non-zero (the printed line is what the row checks), return its stdout otherwise."""
    from latentcube.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
    if code:
        text = " ".join(err.getvalue().split())  # rich wraps long lines on stderr: compare as one line
        if "Traceback" in text:
            raise AssertionError(f"the CLI printed a traceback:\n{err.getvalue()}")
        raise CliFailed(text)
    # The CLI prints warnings as "warning: ..." lines on stderr: raised again here for rows that expect one.
    for printed in re.split(r"(?m)^warning(?: \(\w+\))?: ", err.getvalue())[1:]:
        warnings.warn(" ".join(printed.split()), UserWarning, stacklevel=2)
    return out.getvalue()


class Warned(Exception):
    """The step ran and warned; the message is the warnings' text."""


def warns(run: Callable[[], object]) -> None:
    """Run ``run``; raise :class:`Warned` with the text of its warnings (a row expecting a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    if caught:
        raise Warned(" | ".join(str(w.message) for w in caught))


@dataclass(frozen=True)
class Row:
    id: str
    run: Callable[[Path], object]
    match: str
    fix: bool = True
    """The message must contain "Fix:" (CLI usage errors of click/typer do not)."""


def row(id: str, run: Callable[[Path], object], match: str, *, fix: bool = True) -> Row:
    return Row(id, run, match, fix)


# ------------------------------------------------------------------------------ fixture functions


def tiny_cube(*, s1: bool = False, nt: int = 6, n: int = 8, seed: int = 0):
    """A valid small cube: reflectance 0.05-0.45, linear backscatter 0.01-0.2 on the S2 dates + 1 day."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2021-03-01", periods=nt, freq="5D")
    kw = {}
    if s1:
        kw = dict(s1=rng.uniform(0.01, 0.2, (nt, 2, n, n)).astype("float32"), time_s1=time + pd.Timedelta("1D"))
    return new_cube(s2=rng.uniform(0.05, 0.45, (nt, 10, n, n)).astype("float32"), time=time,
                    y=5_000_000.0 - 10 * np.arange(n), x=500_000.0 + 10 * np.arange(n), crs="EPSG:32632", **kw)


def saved(tmp: Path, ds=None, name: str = "cube.zarr") -> Path:
    return save_cube(tiny_cube() if ds is None else ds, tmp / name)


def folder_of_files(tmp: Path) -> Path:
    """A user's folder: a file and a sub-folder (what `import --out` used to empty)."""
    (tmp / "thesis" / "figures").mkdir(parents=True)
    (tmp / "thesis" / "thesis.tex").write_text("chapter 1")
    return tmp / "thesis"


def file(tmp: Path, name: str, content: bytes = b"") -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def first_chunk(store: Path, var: str = "s2") -> Path:
    from latentcube.stores import array_layout

    return store / var / array_layout(store, var).keys()[0]  # c/0/0/0/0 in Zarr v3


def broken_chunk(tmp: Path, how: str) -> Path:
    """A saved cube whose first s2 chunk file is deleted, emptied or cut in half."""
    store = saved(tmp)
    chunk = first_chunk(store)
    data = chunk.read_bytes()
    if how == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
    return store


def with_values(ds, var: str, where: tuple, value: float):
    values = ds[var].values.copy()
    values[where] = value
    return ds.assign({var: (ds[var].dims, values)})


def with_coord(ds, dim: str, i: int, value: float):
    c = ds[dim].values.copy()
    c[i] = value
    return ds.assign_coords({dim: c})


def s1_shifted(days: int):
    ds = tiny_cube(s1=True)
    return ds.assign_coords(time_s1=ds["time_s1"].values + np.timedelta64(days, "D"))


class _Payload:
    """Pickles to a call of os.system: unrestricted pickle would run it when loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def run_with_last_ckpt(tmp: Path, how: str) -> Path:
    """A training run folder whose checkpoints/last.ckpt carries code ("hostile") or is cut in half."""
    import torch

    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if how == "hostile":
        torch.save({"state_dict": {}, "x": _Payload(tmp / "pwned")}, ckpt)
    else:
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return tmp / "run"


def nan_model_saved(tmp: Path) -> Path:
    """save_model of a sensor autoencoder with one NaN weight."""
    import torch

    from latentcube.nn import SensorAutoencoder, s2_config
    from latentcube.nn.model_file import save_model
    from latentcube.preprocess import Normalization

    model = SensorAutoencoder(s2_config())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return save_model(tmp / "model.pt", model, normalization=Normalization())


def config(tmp: Path, **sections: dict) -> Path:
    """A training config (stage s2) with the given sections, e.g. data={"batch_size": 0}."""
    import yaml

    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump({"stage": "s2", "out_dir": "run", **sections}))
    return path


def load_config(tmp: Path, **sections: dict) -> object:
    from latentcube.train import load_train_config

    return load_train_config(config(tmp, **sections))


def openeo_month_of_fill(tmp: Path) -> Path:
    """An openEO monthly S2 composite (uint16 DN) whose second month is all 65535."""
    import xarray as xr
    from pyproj import CRS

    dn = np.full((3, 4, 4), 1200, "uint16")
    dn[1] = 65535
    src = xr.Dataset({b: (("t", "y", "x"), dn, {"grid_mapping": "crs"}) for b in ("S2-L2A-B04", "S2-L2A-B08")},
                     coords={"t": pd.date_range("2023-01-01", periods=3, freq="MS"),
                             "y": 5e6 - 10 * np.arange(4.0), "x": 4e5 + 10 * np.arange(4.0)})
    src["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32631).to_wkt()})
    src.to_netcdf(tmp / "monthly.nc")
    return tmp / "monthly.nc"


def import_far_s1(tmp: Path) -> object:
    """Import an openEO S2 file with an S1 file whose grid lies 10 km north of it."""
    import xarray as xr
    from pyproj import CRS

    from latentcube.sources.importers import import_cube

    s2 = openeo_month_of_fill(tmp)
    dn = np.full((3, 4, 4), 4000, "uint16")
    src = xr.Dataset({b: (("t", "y", "x"), dn, {"grid_mapping": "crs"}) for b in ("S1-SIGMA0-VV", "S1-SIGMA0-VH")},
                     coords={"t": pd.date_range("2023-01-02", periods=3, freq="MS"),
                             "y": 5.01e6 - 10 * np.arange(4.0), "x": 4e5 + 10 * np.arange(4.0)})
    src["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32631).to_wkt()})
    src.to_netcdf(tmp / "s1.nc")
    return import_cube(s2, tmp / "s1.nc", preset="openeo", scl_mask=None)


def import_openeo(tmp: Path, *nodata: float) -> object:
    from latentcube.sources.importers import import_cube

    return import_cube(openeo_month_of_fill(tmp), preset="openeo", **({"s2_nodata": list(nodata)} if nodata else {}))


def tiny_model(tmp: Path) -> Path:
    """A small untrained S2 autoencoder model file (the rows using it fail before any computing)."""
    from latentcube.nn import SensorAutoencoder, s2_config
    from latentcube.nn.model_file import save_model
    from latentcube.preprocess import Normalization

    cfg = s2_config(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, ffn_dim=16, decoder_d_model=16,
                    decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4)
    return save_model(tmp / "model.pt", SensorAutoencoder(cfg), normalization=Normalization())


def swapped_fusion(tmp: Path) -> object:
    """Fusion built on a stage-1 S2 model given as checkpoints.s1 (the s1 and s2 files swapped)."""
    import yaml

    from latentcube.train import build_task, load_train_config

    path = tmp / "fusion.yaml"
    path.write_text(yaml.safe_dump({"stage": "fusion", "out_dir": "run",
                                    "checkpoints": {"s1": str(tiny_model(tmp)), "s2": str(tiny_model(tmp))}}))
    return build_task(load_train_config(path))


def mismatched_fusion(tmp: Path) -> object:
    """Fusion of an S1 model trained on 9-date windows (a 10-date export) and an S2 model on 11."""
    import yaml

    from latentcube.nn import SensorAutoencoder, s1_config
    from latentcube.nn.model_file import save_model
    from latentcube.preprocess import Normalization
    from latentcube.train import build_task, load_train_config

    cfg = s1_config(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, ffn_dim=16, decoder_d_model=16,
                    decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4, n_dates=9)
    (tmp / "s1").mkdir()
    s1 = save_model(tmp / "s1" / "model.pt", SensorAutoencoder(cfg), normalization=Normalization())
    path = tmp / "fusion.yaml"
    path.write_text(yaml.safe_dump({"stage": "fusion", "out_dir": "run",
                                    "checkpoints": {"s1": str(s1), "s2": str(tiny_model(tmp))}}))
    return build_task(load_train_config(path))


def build_fusion_on(tmp: Path, checkpoints: dict[str, str]) -> object:
    """Fusion built on the given stage-1 model files."""
    import yaml

    from latentcube.train import build_task, load_train_config

    path = tmp / "fusion.yaml"
    path.write_text(yaml.safe_dump({"stage": "fusion", "out_dir": "run", "checkpoints": checkpoints}))
    return build_task(load_train_config(path))


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_with(tmp: Path, settings: dict) -> Path:
    """An s2 training config of the given settings, written to ``tmp/s2.yaml``."""
    import yaml

    path = tmp / "s2.yaml"
    path.write_text(yaml.safe_dump({"stage": "s2", "out_dir": str(tmp / "run"), **settings}))
    return path


def tiny_embedding(tmp: Path) -> Path:
    """A small embedding store ``embedding (time, feature, y, x)`` on the tiny cube's grid and dates."""
    import xarray as xr

    cube = tiny_cube()
    values = np.random.default_rng(0).normal(size=(cube.sizes["time"], 3, 8, 8)).astype("float32")
    emb = xr.Dataset({"embedding": (("time", "feature", "y", "x"), values)},
                     coords={"time": cube["time"].values, "feature": ["fused_0", "fused_1", "fused_2"],
                             "y": cube["y"].values, "x": cube["x"].values},
                     attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)"})
    emb.to_zarr(tmp / "emb.zarr", zarr_format=2)
    return tmp / "emb.zarr"


def located_embedding(tmp: Path) -> Path:
    """The tiny embedding store with its CRS (UTM 32N), as `latentcube embed` writes it."""
    import xarray as xr

    from latentcube.cube import set_crs

    path = tiny_embedding(tmp)
    set_crs(xr.open_zarr(path).load(), "EPSG:32632").to_zarr(tmp / "emb_crs.zarr", zarr_format=2)
    return tmp / "emb_crs.zarr"


def points_csv(tmp: Path, text: str) -> Path:
    return file(tmp, "points.csv", text.encode())


def flux_file(tmp: Path, kind: str) -> Path:
    """A small FLUXNET file that is wrong in one way (defects 9 and 10)."""
    days = pd.date_range("2020-01-01", periods=8, freq="D")
    df = pd.DataFrame({"TIMESTAMP": days.strftime("%Y%m%d"), "GPP_NT_VUT_REF": 1.0, "NEE_VUT_REF_QC": 1.0})
    path = tmp / "FLX_XX-Bad_DD.csv"
    if kind == "header only":
        path.write_text("TIMESTAMP,GPP_NT_VUT_REF,NEE_VUT_REF_QC\n")
    elif kind == "semicolons":
        df.to_csv(path, sep=";", index=False)
    elif kind == "most days missing":
        df.loc[1:, "GPP_NT_VUT_REF"] = -9999
        df.to_csv(path, index=False)
    elif kind == "eth at 47 m":
        mid = pd.date_range("2021-07-01 00:15", periods=48, freq="30min")
        pd.DataFrame({"TIMESTAMP_MIDDLE": mid.strftime("%Y-%m-%d %H:%M"), "GPP_DT_CUT_REF": 1.0, "QCF_NEE": 0,
                      "TA_T1_47_1_gfXG": 10.0, "SW_IN_T1_47_1_gfXG": 100.0}).to_csv(path, index=False)
    elif kind == "other names":
        df.rename(columns={"GPP_NT_VUT_REF": "GPP_DT_VUT_REF"}).to_csv(path, index=False)
    return path


def gpp_cli(tmp: Path, flux: Path, *extra: str) -> str:
    """`latentcube evaluate gpp` on one tower whose file is ``flux``: the tower files are read before any
    cube or model, so neither needs to be real."""
    (tmp / "c1.zarr").mkdir(exist_ok=True)
    pd.DataFrame({"site_id": ["XX-Bad"], "cube": ["c1"], "row": [4], "col": [4], "veg_type": ["GRA"]}).to_csv(
        tmp / "towers.csv", index=False)
    return cli("evaluate", "gpp", "--checkpoint", file(tmp, "model.pt", b"x"), "--sites", tmp / "towers.csv",
               "--fluxnet", flux.parent, "--cubes", tmp, "--out", tmp / "run", *extra)


# --------------------------------------------------------------------------------------- the table

CASES: list[Row] = [
    # ---- cubes
    row("cube: path does not exist", lambda t: open_cube(t / "nope.zarr"), r"no such cube.*Fix: check the path"),
    row("cube: reflectance as digital numbers", lambda t: validate_cube(tiny_cube().assign(s2=lambda d: d.s2 * 10000)),
        r"unscaled digital numbers.*Fix: divide by 10000"),
    row("cube: S1 in dB", lambda t: validate_cube(tiny_cube(s1=True).assign(s1=lambda d: 10 * np.log10(d.s1))),
        r"looks like decibels.*Fix: ds\['s1'\] = 10 \*\* \(ds\['s1'\] / 10\)"),
    row("cli: validate a missing cube", lambda t: cli("validate", t / "nope.zarr"), r"CubeError: no such cube"),
    # ---- writing over paths (defect 2)
    row("import --out: a folder of other files", lambda t: cli("import", "--out", folder_of_files(t), "--s2", openeo_month_of_fill(t), "--preset", "openeo"), r"thesis exists and is not a latentcube cube; refusing to delete it"),
    row("import --out: a file", lambda t: cli("import", "--out", file(t, "notes.txt", b"mine"), "--s2", openeo_month_of_fill(t), "--preset", "openeo"), r"notes\.txt exists and is not a latentcube cube"),
    row("import --out: an existing cube without --overwrite", lambda t: cli("import", "--out", saved(t), "--s2", openeo_month_of_fill(t), "--preset", "openeo"), r"cube .*cube\.zarr exists\. Fix: pass --overwrite"),
    row("save_cube: an existing cube, overwrite=False", lambda t: save_cube(tiny_cube(), saved(t), overwrite=False), r"cube .*cube\.zarr exists\. Fix: pass --overwrite"),
    row("save_cube: a folder of other files, even with overwrite", lambda t: save_cube(tiny_cube(), folder_of_files(t), overwrite=True), r"refusing to delete it\. Fix: choose an empty or new --out"),
    # ---- not a cube (defect 9)
    row("cube: an empty folder", lambda t: open_cube((t / "e.zarr").mkdir() or t / "e.zarr"), r"is an empty folder, not a cube\. Fix:"),
    row("cube: a folder of other files", lambda t: cli("info", folder_of_files(t)), r"is a folder but not a Zarr cube \(no \.zgroup or zarr\.json; it holds figures, thesis\.tex\)"),
    row("cube: an empty file", lambda t: cli("validate", file(t, "cube.nc")), r"is an empty file \(0 bytes\), not a cube"),
    row("cube: a text file", lambda t: open_cube(file(t, "cube.nc", b"hello")), r"is not a NetCDF file"),
    row("cube: NaN in x", lambda t: validate_cube(with_coord(tiny_cube(), "x", 2, np.nan)), r"coordinate 'x' has 1 NaN or infinite value\(s\) \(first at index 2 of 8\)"),
    row("cube: inf in y", lambda t: validate_cube(with_coord(tiny_cube(), "y", 0, np.inf)), r"coordinate 'y' has 1 NaN or infinite value"),
    # ---- impossible values (defects 3, 9, 10)
    row("cube: 1e30 reflectance over most of the cube", lambda t: validate_cube(with_values(tiny_cube(), "s2", (slice(None), slice(None), slice(0, 6)), 1e30)), r"impossible reflectances.*a fill value stored as data, not digital numbers"),
    row("cube: +inf on one pixel-date (read as NaN)", lambda t: warns(lambda: validate_cube(with_values(tiny_cube(), "s2", (0, slice(None), 0, 0), np.inf))), r"of the sampled s2 values are infinite or outside the physical range \[-0\.5, 2\]; embed and train read their pixel-dates as NaN"),
    row("cube: S1 1e30 on one pixel-date (read as NaN)", lambda t: warns(lambda: validate_cube(with_values(tiny_cube(s1=True), "s1", (0, slice(None), 0, 0), 1e30))), r"sampled s1 values are infinite or outside the physical range \[0, 10000\]"),
    row("import: openEO month of 65535 without the preset's nodata", lambda t: import_openeo(t, 0), r"most often 6\.5535.*not digital numbers\. Fix: .*--s2-nodata"),
    # ---- corrupt chunks (defect 4)
    row("cube: a deleted chunk file", lambda t: open_cube(broken_chunk(t, "deleted")), r"variable 's2', chunk file .*s2/c/0/0/0/0 is missing .*read as NaN"),
    row("cube: an empty chunk file", lambda t: cli("validate", broken_chunk(t, "empty")), r"variable 's2', chunk file .*s2/c/0/0/0/0 is empty \(0 bytes\)"),
    row("cube: a truncated chunk file", lambda t: open_cube(broken_chunk(t, "truncated")), r"variable 's2', chunk file .*s2/c/0/0/0/0 is [0-9,]+ bytes but its Blosc header announces"),
    # ---- training run state (defects 1, 3, 5)
    row("train: a last.ckpt that carries code", lambda t: cli("train", "s2", "--config", config(t), "--out", run_with_last_ckpt(t, "hostile")), r"TrainError: checkpoint .*last\.ckpt holds more than weights and training state \(.*system.*\); it was not loaded, as loading it could run code\. Fix: delete it"),
    row("train: a truncated last.ckpt", lambda t: cli("train", "s2", "--config", config(t), "--out", run_with_last_ckpt(t, "truncated")), r"TrainError: checkpoint .*last\.ckpt is corrupt or truncated \(.*\)\. Fix: delete .*last\.ckpt to start this run again"),
    row("save_model: a NaN weight", nan_model_saved, r"refusing to write .*model\.pt: 1 of \d+ weight tensors hold NaN or infinity .*Fix:"),
    # ---- S1 coverage (defect 6)
    row("validate: S1 dates never meet S2's", lambda t: cli("validate", saved(t, s1_shifted(400))), r"S1 covers 0 of 6 S2 dates.*Fix: .*--allow-missing-s1"),
    row("import: S1 file on a grid 10 km away", lambda t: import_far_s1(t), r"S1 files \['s1\.nc'\]: S1 covers 0 of 3 S2 dates .*0% of the sampled S2 pixels"),
    row("validate: S1 over a quarter of the pixels", lambda t: warns(lambda: cli("validate", saved(t, tiny_cube(s1=True).pipe(lambda d: d.assign(s1=d.s1.where(d.x < d.x[2])))))), r"S1 covers 6 of 6 S2 dates \(100%.*and 25% of the sampled S2 pixels"),
    # ---- training configs (defect 9)
    row("config: batch size 0", lambda t: load_config(t, data={"batch_size": 0}), r"train\.yaml\.data\.batch_size = 0 is out of range\. Fix: set batch_size to a value >= 1"),
    row("config: negative workers", lambda t: load_config(t, data={"num_workers": -2}), r"data\.num_workers = -2 is out of range"),
    row("config: 0 epochs", lambda t: load_config(t, trainer={"max_epochs": 0}), r"trainer\.max_epochs = 0 is out of range"),
    row("config: learning rate 10", lambda t: load_config(t, optim={"lr": 10}), r"optim\.lr = 10\.0 is out of range\. Fix: set lr to a value > 0 and <= 1"),
    row("config: learning rate NaN", lambda t: load_config(t, optim={"lr": float("nan")}), r"optim\.lr = nan is out of range"),
    row("cli: train --max-epochs 0", lambda t: cli("train", "s2", "--config", config(t), "--max-epochs", "0"), r"max_epochs = 0 is out of range"),
    # ---- embed and gap-fill options (defect 9)
    row("train fusion: checkpoints.s1 is an S2 model", swapped_fusion, r"checkpoints\.s1 \(.*model\.pt\) is a s2 model of bands B02, .*not a s1 model \(VV, VH\)\. Fix: set checkpoints\.s1 to the model\.pt of `latentcube train s1` \(the s1 and s2 files look swapped\)"),
    row("train fusion: S1 and S2 models of different windows", mismatched_fusion, r"the sensor models fuse one window, but they were trained on different ones: checkpoints\.s1 \(.*s1/model\.pt\) 15 px x 9 dates, checkpoints\.s2 \(.*model\.pt\) 15 px x 11 dates\. Fix: retrain the stages with the same model: \{n_dates, patch_size\}"),
    row("train fusion: a stage-1 model not trained yet", lambda t: build_fusion_on(t, {"s1": str(t / "runs/s1/model.pt"), "s2": str(tiny_model(t))}), r"checkpoints\.s1 \(.*runs/s1/model\.pt\) does not exist: fusion trains on the stage-1 models\. Fix: train that stage first \(`latentcube train s1 --config s1\.yaml`\)"),
    row("train: an empty data.cube_dir", lambda t: cli("train", "s2", "--config", config_with(t, {"data": {"cube_dir": str(mkdir(t / "cubes"))}}), "--check"), r"data\.cube_dir .*cubes holds no \*\.zarr cube\. Fix: fetch or import cubes into it"),
    row("embed --device tpu", lambda t: cli("embed", saved(t), "--checkpoint", tiny_model(t), "--out", "e.zarr", "--device", "tpu"), r"device='tpu' is not a device embed can run on \(cpu, cuda or cuda:N\)\. Fix: --device cpu"),
    row("embed --block-px 3", lambda t: cli("embed", saved(t), "--checkpoint", tiny_model(t), "--out", "e.zarr", "--block-px", "3"), r"block_px=3 is below the minimum 16: .* reads 32x the pixels it embeds .*Fix: --block-px 256 \(the default\), or at least 16"),
    row("gapfill --freq 0D", lambda t: cli("gapfill", tiny_embedding(t), "--out", "f.zarr", "--freq", "0D"), r"freq '0D' is not a positive step\. Fix: use a positive number of days"),
    row("gapfill --freq -5D", lambda t: cli("gapfill", tiny_embedding(t), "--out", "f.zarr", "--freq", "-5D"), r"freq '-5D' is not a positive step\. Fix:"),
    # ---- window aggregates and point sampling (issue 26)
    row("aggregate: a window without dates", lambda t: cli("aggregate", located_embedding(t), "--windows", "2021-06-01/2021-06-30", "--out", t / "w.zarr"), r"1 window\(s\) hold no date of the store \(6 dates, 2021-03-01 \.\. 2021-03-26\): 2021-06-01/2021-06-30\. Fix: .*--empty nan"),
    row("aggregate: two windows from one day", lambda t: cli("aggregate", located_embedding(t), "--windows", "2021-03-01/2021-03-10,2021-03-01/2021-03-20", "--out", t / "w.zarr"), r"both start on 2021-03-01.*Fix: aggregate them into two stores"),
    row("sample: a CSV without coordinates", lambda t: cli("sample", located_embedding(t), "--points", points_csv(t, "a,b\n1,2\n"), "--series", "--out", t / "s.csv"), r"points\.csv has no coordinate columns \(it has \['a', 'b'\]\)\. Fix: add lon and lat columns"),
    row("sample: x/y without a CRS", lambda t: cli("sample", located_embedding(t), "--points", points_csv(t, "x,y\n500005,4999995\n"), "--series", "--out", t / "s.csv"), r"has x/y columns but no CRS\. Fix: pass --crs"),
    row("sample: points outside the store", lambda t: cli("sample", located_embedding(t), "--points", points_csv(t, "lon,lat\n2.35,48.85\n"), "--series", "--out", t / "s.csv"), r"1 of 1 points/polygons lie outside the store \(pixel edges x 499995 \.\. 500075, .* in EPSG:32632.*\)\. Fix: check the points' CRS"),
    # ---- FLUXNET files (defects 9, 10)
    row("fluxnet: a header-only CSV", lambda t: read_fluxnet(flux_file(t, "header only")), r"has a header but no records .*Fix: pass the complete FLUXNET file"),
    row("fluxnet: a semicolon-separated CSV", lambda t: read_fluxnet(flux_file(t, "semicolons")), r"is separated by semicolons, not commas .*Fix: FLUXNET files are comma-separated"),
    row("fluxnet: a DD file with most days missing", lambda t: warns(lambda: read_fluxnet(flux_file(t, "most days missing"))), r"GPP on only 12% of the 8 days from 2020-01-01 to 2020-01-08 \(1 days\).*Fix: check the export"),
    row("fluxnet: eth preset, drivers at another height", lambda t: warns(lambda: read_fluxnet(flux_file(t, "eth at 47 m"), columns="eth")), r"driver columns not found, read without them: ta 'TA_T1_2_1' \(candidates: \['TA_T1_47_1_gfXG'\]\); sw_in 'SW_IN_T1_2_1' \(candidates: \['SW_IN_T1_47_1_gfXG'\]\).*Fix: .*--flux-columns eth,ta=<column>"),
    row("evaluate gpp: other GPP column names", lambda t: gpp_cli(t, flux_file(t, "other names")), r"no GPP column 'GPP_NT_VUT_REF'\. GPP-like columns found: \['GPP_DT_VUT_REF'\].*Fix: .*CLI: --flux-columns gpp=<column>"),
    row("evaluate gpp --meteo: drivers absent", lambda t: gpp_cli(t, flux_file(t, "eth at 47 m"), "--flux-columns", "eth", "--meteo", "ta,vpd"), r"driver columns not found: ta 'TA_T1_2_1' \(candidates: \['TA_T1_47_1_gfXG'\]\); vpd 'VPD_T1_2_1' \(candidates: none\)"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_gets_a_clear_message(case: Row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve where the user is, and nothing lands in the repo
    try:
        case.run(tmp_path)
    except (LatentcubeError, CliFailed, Warned) as err:
        message = str(err)
    else:
        pytest.fail(f"{case.id}: accepted without an error or a warning")
    assert re.search(case.match, message), f"{case.id}: {message!r} does not match {case.match!r}"
    if case.fix:
        assert "Fix:" in message, f"{case.id}: no fix in {message!r}"
