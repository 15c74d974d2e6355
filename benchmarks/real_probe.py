"""Do the embeddings beat the raw bands and a PCA code of the same size on real data?

On the WorldCereal chip of ``../shared/data`` (64 x 64 px, 2018-08 .. 2019-11) this script does what a
user does: it imports the chip with ``latentcube import`` (crop type ``CT`` and land cover ``LC`` as
label layers), trains the three stages with the one-area recipe (``configs/area/``, the east 30 % held
out: ``spatial_split: {val: 0.3}``, since 20 % of 64 px is narrower than one patch) once per seed with
``latentcube train``, embeds the chip with ``latentcube embed`` (S2 model and fusion model; the held-out strip with the
quality layer), then probes both label layers with ``latentcube.evaluate.probe.run_probe`` and prints one table:

- crop type (CT) and land cover (LC), seasonal (NaN-median of each third of the dates) and one-date
  protocols, logistic regression, 16-px block CV, balanced accuracy, mean ± sd over the seeds (seed s
  probes model s with folds shuffled by s);
- fused 7-d embedding vs raw S2+S1 bands vs PCA-7 of the fused model's inputs, and also vs raw S2 and
  PCA-7 of S2 alone (single-date S1 is speckled and can weaken the S2+S1 baselines); S2 9-d embedding vs
  raw S2 vs PCA-9 (PCA fitted on the training strip of the chip);
- S2 centre-pixel MAE on the held-out strip: the S2 model against PCA-9, the fusion model against
  PCA-7, on the same pixel-dates (the models' ``quality_s2`` layer; reflectance).

Labels are only read by the probe; training sees the S1/S2 bands alone.

    python benchmarks/real_probe.py                                  # 3 seeds, temporary work folder
    python benchmarks/real_probe.py --seeds 0 --epochs 1 --work /tmp/rp   # quick end-to-end check
    python benchmarks/real_probe.py --work /tmp/rp --config-dir my_configs --json rp.json
    python benchmarks/real_probe.py --work /tmp/rp --cv-repeats 4   # each seed: mean of 4 CV shuffles (less fold noise)
    python benchmarks/real_probe.py --chip DIR                        # another WorldCereal chip (same file layout)
    python benchmarks/real_probe.py --probe-chip DIR                  # train on the shared chip, probe an unseen one
    python benchmarks/real_probe.py --halves --cv-repeats 4          # train on its north half, probe the south half

``--probe-chip DIR`` checks transfer: the models trained on ``--chip`` embed a second chip, and the probe
and the S2 centre MAE (on the whole second chip, every pixel unseen in training) run there, with the PCA
baselines fitted on the training chip's training strip, as for the models. ``--halves`` does the same
on one chip: it cuts ``--chip`` into its north and south halves (in the work folder), trains on the north
half and probes the south one.

``--work DIR`` keeps the imported cube, the runs and the embeddings: a re-run with the same configs
only re-probes; a changed config (or ``--epochs``) retrains that seed's stages from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTCUBE_SHARED_DATA") or ROOT.parent / "shared" / "data")  # as the tests
CHIP = SHARED / "worldcereal_chip_31UES_2018_2019"
STAGES = ("s1", "s2", "fusion")
VAL = 0.3  # east share held out: 20 % of 64 px is narrower than one 15-px patch
LABELS = {"CT": "croptype", "LC": "landcover"}
PROTOCOLS = {"seasonal": "seasonal", "one date": "date"}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[real_probe {time.time() - T0:6.0f} s] {msg}", flush=True)


def cli(*args: str) -> None:
    """Run ``latentcube ARGS`` as a user would (same interpreter); stop on failure."""
    cmd = [sys.executable, "-m", "latentcube.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"real_probe: `latentcube {' '.join(args)}` failed:\n{res.stdout[-2000:]}{res.stderr[-4000:]}")


def import_chip(work: Path, chip: Path = CHIP, name: str = "chip") -> Path:
    """``latentcube import`` of a WorldCereal chip folder (S2_L2A_10m/20m, S1_GRD, OUTPUT_POLY-110 netCDFs)."""
    cube = work / f"{name}.zarr"
    if cube.exists():
        log(f"cube {cube} exists: reused")
        return cube

    def one(pattern: str) -> str:
        found = sorted(chip.glob(pattern))
        if len(found) != 1:
            sys.exit(f"real_probe: expected one {pattern} in {chip}, found {len(found)}. Fix: pass a WorldCereal "
                     "chip folder (S2_L2A_10m_*.nc, S2_L2A_20m_*.nc, S1_GRD-*.nc, OUTPUT_POLY-110_*.nc).")
        return str(found[0])

    labels = one("OUTPUT_POLY-110_*.nc")
    log(f"importing {chip.name} -> {cube}")
    cli("import", "--s2", str(chip / "S2_L2A_*m_*.nc"), "--s1", one("S1_GRD-*.nc"), "--preset", "worldcereal",
        "--layer", f"croptype={labels}:CT", "--layer", f"landcover={labels}:LC", "--out", str(cube))
    return cube


def split_chip(chip: Path, work: Path) -> tuple[Path, Path]:
    """The chip's north and south halves as two chip folders under ``work`` (same files, rows cut; the
    20 m files by the same ground rows): ``--halves`` trains on the north half and probes the south one."""
    import xarray as xr

    halves = {"north": work / "half_north", "south": work / "half_south"}
    for name, folder in halves.items():
        if folder.exists():
            continue
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in sorted(chip.glob("*.nc")):
            with xr.open_dataset(f, mask_and_scale=False, decode_times=False) as ds:
                for v in ds.variables.values():
                    v.attrs.pop("bounds", None)  # a string attribute the netCDF writer would take for CF cell bounds
                n = ds.sizes["y"]
                ds.isel(y=slice(0, n // 2) if name == "north" else slice(n // 2, n)).to_netcdf(tmp / f.name)
        tmp.rename(folder)
    return halves["north"], halves["south"]


def stage_config(config_dir: Path, stage: str, cube: Path, seed_dir: Path, seed: int) -> dict[str, Any]:
    cfg = yaml.safe_load((config_dir / f"{stage}.yaml").read_text(encoding="utf-8"))
    cfg["seed"] = seed
    cfg["out_dir"] = str(seed_dir / "runs" / stage)
    cfg.setdefault("data", {})
    cfg["data"]["cubes"] = [str(cube)]
    cfg["data"]["spatial_split"] = {"val": VAL}
    if stage == "fusion":
        cfg["checkpoints"] = {s: str(seed_dir / "runs" / s / "model.pt") for s in ("s1", "s2")}
    return cfg


def train_seed(cube: Path, work: Path, config_dir: Path, seed: int, epochs: int | None) -> tuple[Path, bool]:
    """Train the three stages of one seed (reusing runs whose config is unchanged); True when any retrained."""
    seed_dir = work / f"seed{seed}"
    retrained = False
    for stage in STAGES:
        cfg = stage_config(config_dir, stage, cube, seed_dir, seed)
        if epochs is not None:
            cfg.setdefault("trainer", {})["max_epochs"] = int(epochs)
        text = yaml.safe_dump(cfg, sort_keys=True)
        path = seed_dir / "configs" / f"{stage}.yaml"
        run = Path(cfg["out_dir"])
        if not retrained and (run / "model.pt").exists() and path.exists() and path.read_text(encoding="utf-8") == text:
            log(f"seed {seed}: {stage} model exists with the same config: reused")
            continue
        if run.exists():
            shutil.rmtree(run)  # a changed config (or an upstream retrain) starts again, not resumes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        log(f"seed {seed}: training {stage} ({config_dir / f'{stage}.yaml'}"
            + (f", {epochs} epochs" if epochs is not None else "") + ")")
        cli("train", stage, "--config", str(path))
        retrained = True
    return seed_dir, retrained


def _embed(cube: Path, model: Path, out: Path, fresh: bool, what: str, *extra: str) -> Path:
    if out.exists() and not fresh and out.stat().st_mtime >= model.stat().st_mtime:
        log(f"{out.parent.name}: {out.name} exists: reused")
    else:
        log(f"{out.parent.name}: embedding {what} -> {out.name}")
        cli("embed", str(cube), "--checkpoint", str(model), "--out", str(out), "--overwrite", *extra)
    return out


def strip_cube(cube: Path, work: Path, halo: int) -> Path:
    """The held-out strip plus the models' halo as its own cube: its quality layer equals the whole
    chip's on the strip (dense inference is exact), for under half of the chip's cost."""
    from latentcube.cube import open_cube, save_cube
    from latentcube.splits import spatial_split

    ds = open_cube(cube)
    _, cols = spatial_split(ds.sizes["y"], ds.sizes["x"], {"val": VAL}, patch=1)["val"]
    first = max(cols.start - halo, 0)
    path = work / f"held_out_strip_from_x{first}.zarr"
    if not path.exists():
        save_cube(ds.isel(x=slice(first, None)), path)
    return path


def embed_seed(cube: Path, work: Path, seed_dir: Path, retrained: bool, mae: bool = True,
               unseen: bool = False) -> tuple[dict[str, Path], dict[str, Path]]:
    """Per model (fusion, S2): the chip's embedding for the probe, and the quality layer of the held-out
    strip (``unseen``: a chip the models were not trained on, its quality layer on the whole chip)."""
    import xarray as xr

    stores, quality = {}, {}
    tag = f"_{cube.stem}" if unseen else ""
    for name, stage in (("fused", "fusion"), ("s2", "s2")):
        model = seed_dir / "runs" / stage / "model.pt"
        stores[name] = _embed(cube, model, seed_dir / f"emb_{name}{tag}.zarr", retrained,
                              f"{cube.stem} with the {stage} model")
        if not mae:
            continue
        if unseen:
            quality[name] = _embed(cube, model, seed_dir / f"quality_{name}{tag}.zarr", retrained,
                                   f"{cube.stem} with the {stage} model's quality layer", "--quality")
            continue
        halo = int(json.loads(xr.open_zarr(stores[name]).attrs["preprocessing"])["halo_px"])
        quality[name] = _embed(strip_cube(cube, work, halo), model, seed_dir / f"quality_{name}.zarr", retrained,
                               f"the held-out strip with the {stage} model's quality layer", "--quality")
    return stores, quality


def held_out_mae(cube: Path, quality: dict[str, Path], unseen: Path | None = None) -> dict[str, float]:
    """S2 centre MAE (reflectance) on the held-out strip: each model's quality_s2 against PCA-k of its
    inputs fitted on the training strip, on the pixel-dates where both are defined. With ``unseen`` (a
    chip the models were not trained on, ``quality`` computed there): on the whole of that chip."""
    import xarray as xr

    from latentcube.cube import open_cube
    from latentcube.evaluate.probe import fit_pca_code, model_inputs, open_embedding_store
    from latentcube.splits import spatial_split

    fit = open_cube(cube)
    ds = open_cube(unseen) if unseen is not None else fit
    if unseen is not None:
        rows_sl, cols_sl = slice(0, ds.sizes["y"]), slice(0, ds.sizes["x"])
    else:
        rows_sl, cols_sl = spatial_split(ds.sizes["y"], ds.sizes["x"], {"val": VAL}, patch=1)["val"]
    rr, cc = np.mgrid[rows_sl, cols_sl]
    rows, cols = rr.ravel(), cc.ravel()
    out = {}
    # PCA-9 of S2 for the S2 model; for the fusion model PCA-7 of its own inputs (S2+S1) and PCA-7 of S2
    # alone (all 7 components spent on S2: the stricter reference)
    for name, key, k, sensors in (("s2", "s2_pca9", 9, ("s2",)), ("fused", "fused_pca7", 7, ("s2", "s1")),
                                  ("fused", "fused_pca7_s2only", 7, ("s2",))):
        _, settings = open_embedding_store(quality[name])
        q = xr.open_zarr(quality[name])["quality_s2"].sel(x=ds["x"].values[cols_sl]).isel(y=rows_sl)
        if not np.array_equal(q["time"].values, ds["time"].values):
            sys.exit("real_probe: the quality layer is not on the chip's S2 dates.")
        model_err = q.transpose("time", "y", "x").values.reshape(q.sizes["time"], -1)  # (T, n), row-major as rows/cols
        code = fit_pca_code(fit, k, sensors, settings=settings, spatial_split={"val": VAL})
        x, _, _ = model_inputs(ds, rows, cols, ds["time"].values, ("s2", "s1") if name == "fused" else sensors,
                               settings, 6.0)
        pca_err = code.sensor_mae(x[:, : len(code.bands)], "s2")  # S2 bands come first in the model inputs
        both = np.isfinite(model_err) & np.isfinite(pca_err)
        if name == "fused":  # the same pixel-dates for both PCA references: S1 and S2 valid
            both &= np.isfinite(x).all(axis=1)
        out[f"{name}_model"] = float(model_err[both].mean())
        out[key] = float(pca_err[both].mean())
        out[f"{name}_pixel_dates"] = int(both.sum())
    return out


def probe(cube: Path, stores: dict[int, dict[str, Path]], seeds: list[int], classifiers: tuple[str, ...],
          cv_repeats: int = 1, fit_cube: Path | None = None) -> list[dict]:
    """Probe rows; with ``cv_repeats`` > 1 each seed's score is the mean over that many CV shuffles
    (``run_probe(cv_repeats=...)``), which lowers the fold noise of one 64-px chip. The PCA baselines are
    fitted on the training strip of ``fit_cube`` (default: ``cube``, the chip the models trained on)."""
    import warnings

    from latentcube.evaluate.probe import run_probe

    rows = []
    # the fused embedding also against S2-only baselines (single-date S1 is speckled: it can weaken raw/PCA)
    runs = (("fused", 7, None, ("embedding", "raw", "pca")), ("fused", 7, ("s2",), ("raw", "pca")),
            ("s2", 9, None, ("embedding", "raw", "pca")))
    for code, layer in LABELS.items():
        for group, k, baseline, sources in runs:
            log(f"probing {code} ({layer}) with the {group} embedding" + (" (S2-only baselines)" if baseline else "")
                + f", {len(seeds)} seed(s)" + (f" x {cv_repeats} CV shuffles" if cv_repeats > 1 else ""))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                table = run_probe({s: stores[s][group] for s in seeds}, cube, labels=layer, seeds=seeds,
                                  feature_sets=[f"{s}_{p}" for p in PROTOCOLS.values() for s in sources],
                                  classifiers=classifiers, block_px=16, folds=5, embedding_features=group,
                                  pca_fit=fit_cube or cube, pca_spatial_split={"val": VAL}, cv_repeats=cv_repeats,
                                  baseline_sensors=baseline)
            for w in caught:
                if "dropped classes" in str(w.message) and not baseline:
                    log(f"  {w.message}")
            s = table.attrs["probe"]
            ba = table[table["metric"] == "balanced_accuracy"]
            for _, r in ba.iterrows():
                source, _, protocol = r["features"].rpartition("_")
                rows.append({
                    "labels": code, "protocol": next(k_ for k_, v in PROTOCOLS.items() if v == protocol),
                    "group": group, "source": source + ("_s2only" if baseline else ""), "classifier": r["classifier"],
                    "name": _row_name(group, source, k, s["raw_bands"], baseline), "n_features": int(r["n_features"]),
                    "mean": float(r["mean"]), "std": float(r["std"]), "per_seed": [float(v) for v in r["per_seed"]],
                    "cv_repeats": cv_repeats, "n_pixels": int(r["n_pixels"]), "n_classes": int(r["n_classes"]),
                    "date": s["date"], "windows": s["windows"],
                })
    return rows


def _row_name(group: str, source: str, k: int, raw_bands: list[str], baseline: tuple[str, ...] | None = None) -> str:
    sensors = "+".join(s.upper() for s in baseline) if baseline else "S2+S1" if group == "fused" else "S2"
    return {"embedding": f"{group} {k}-d embedding", "raw": f"raw {sensors} ({len(raw_bands)} bands)",
            "pca": f"PCA-{k} ({sensors})"}[source]


def print_table(rows: list[dict], mae: dict[int, dict[str, float]], seeds: list[int], where: str = "the held-out strip") -> None:
    sd = "sd over seeds" if len(seeds) > 1 else "sd over folds"
    repeats = rows[0].get("cv_repeats", 1)
    each = f"; each seed the mean of {repeats} CV shuffles" if repeats > 1 else ""
    print(f"\nBalanced accuracy, logistic regression, 16-px block CV (5 folds), mean ± {sd}; seeds {seeds}{each}")
    print(f"{'labels':6} {'protocol':9} {'features':26} {'n':>4} {'balanced acc.':>15}  per seed")
    for r in rows:
        if r["classifier"] != "logreg":
            continue
        per = " ".join(f"{v:.3f}" for v in r["per_seed"])
        print(f"{r['labels']:6} {r['protocol']:9} {r['name']:26} {r['n_features']:>4} {r['mean']:>7.3f} ± {r['std']:.3f}  {per}")
    first = rows[0]
    print(f"(one date: {first['date']}; seasonal windows: "
          + ", ".join(f"{w['start']}..{w['end']}" for w in first["windows"]) + ")")
    for lab in LABELS:
        for protocol in PROTOCOLS:
            for group in ("fused", "s2"):
                sel = {r["source"]: r for r in rows if r["labels"] == lab and r["protocol"] == protocol
                       and r["group"] == group and r["classifier"] == "logreg"}
                for tag in ("", "_s2only"):
                    if not {"embedding", f"raw{tag}", f"pca{tag}"} <= set(sel):
                        continue
                    e, raw, pca = (np.array(sel[s]["per_seed"]) for s in ("embedding", f"raw{tag}", f"pca{tag}"))
                    margin = e - np.maximum(raw, pca)
                    what = "max(raw, PCA) of S2 alone" if tag else "max(raw, PCA)"
                    print(f"  {lab} {protocol:9} {group:5}: embedding - {what} = {margin.mean():+.3f} "
                          f"(per seed {' '.join(f'{m:+.3f}' for m in margin)}; above both in every seed: "
                          f"{'yes' if (margin > 0).all() else 'no'})")
    if not mae:
        return
    print(f"\nS2 centre-pixel MAE on {where} (reflectance), same pixel-dates, mean ± sd over seeds")
    for name, key, ref in (("s2", "s2_pca9", "PCA-9 (S2)"), ("fused", "fused_pca7", "PCA-7 (S2+S1)"),
                           ("fused", "fused_pca7_s2only", "PCA-7 (S2 only)")):
        m = np.array([mae[s][f"{name}_model"] for s in seeds])
        p = np.array([mae[s][key] for s in seeds])
        label = "S2 model" if name == "s2" else "fusion model"
        print(f"  {label:13} {m.mean():.4f} ± {m.std(ddof=1) if len(m) > 1 else 0:.4f}   {ref:16} {p.mean():.4f}   "
              f"ratio {np.mean(m / p):.2f}x  ({mae[seeds[0]][f'{name}_pixel_dates']} pixel-dates)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="work folder, reused across runs (default: temporary)")
    parser.add_argument("--config-dir", type=Path, default=ROOT / "configs" / "area",
                        help="folder with s1.yaml, s2.yaml, fusion.yaml (default configs/area)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma separated (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs of every stage")
    parser.add_argument("--json", type=Path, default=None, help="also write the table and MAE as JSON")
    parser.add_argument("--no-mae", action="store_true",
                        help="skip the held-out S2 centre MAE (its quality layer costs ~10x an embedding on CPU)")
    parser.add_argument("--knn", action="store_true", help="also score k-NN (in the JSON; the table shows logistic regression)")
    parser.add_argument("--chip", type=Path, default=CHIP,
                        help="WorldCereal chip folder to import and train on (default: the one of ../shared/data)")
    parser.add_argument("--probe-chip", type=Path, default=None,
                        help="another chip folder: the models trained on --chip embed it and the probe and MAE run "
                             "there (transfer to an unseen area); default: probe the training chip")
    parser.add_argument("--halves", action="store_true",
                        help="transfer check on one chip: train on the north half of --chip, probe its south half "
                             "(no pixel of it seen in training)")
    parser.add_argument("--cv-repeats", type=int, default=1,
                        help="CV shuffles per seed, averaged (default 1: block grid and folds drawn by the seed, "
                             "the issue's protocol; 4 lowers the fold noise)")
    args = parser.parse_args()
    if args.cv_repeats < 1:
        sys.exit(f"real_probe: --cv-repeats must be >= 1, got {args.cv_repeats}. Fix: pass 1 (the issue's protocol) or more.")
    if not args.chip.exists():
        if args.chip != CHIP:
            sys.exit(f"real_probe: --chip {args.chip} does not exist. Fix: pass a WorldCereal chip folder.")
        print(f"real_probe: skipped, the WorldCereal chip is absent ({CHIP}).")
        return
    if args.halves and args.probe_chip is not None:
        sys.exit("real_probe: --halves probes the south half of --chip; it cannot be combined with --probe-chip. "
                 "Fix: pass one of them.")
    if args.probe_chip is not None and not args.probe_chip.is_dir():
        sys.exit(f"real_probe: --probe-chip {args.probe_chip} is not a folder. Fix: pass a WorldCereal chip folder.")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    config_dir = args.config_dir.resolve()
    missing = [s for s in STAGES if not (config_dir / f"{s}.yaml").exists()]
    if missing:
        sys.exit(f"real_probe: {config_dir} lacks {[f'{s}.yaml' for s in missing]}. Fix: pass --config-dir with all three.")
    work = (args.work or Path(tempfile.mkdtemp(prefix="real_probe_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}; configs {config_dir}; seeds {seeds}")
    if args.halves:
        args.chip, args.probe_chip = split_chip(args.chip.resolve(), work)
        log(f"halves: training on {args.chip}, probing {args.probe_chip}")
    cube = import_chip(work, args.chip.resolve())
    unseen = import_chip(work, args.probe_chip.resolve(), f"probe_{args.probe_chip.resolve().name}") if args.probe_chip else None
    stores, mae = {}, {}
    for seed in seeds:
        seed_dir, retrained = train_seed(cube, work, config_dir, seed, args.epochs)
        stores[seed], quality = embed_seed(unseen or cube, work, seed_dir, retrained, not args.no_mae, unseen=bool(unseen))
        if quality:
            mae[seed] = held_out_mae(cube, quality, unseen)
            log(f"seed {seed}: S2 centre MAE {mae[seed]}")
    rows = probe(unseen or cube, stores, seeds, ("logreg", "knn") if args.knn else ("logreg",), args.cv_repeats,
                 fit_cube=cube)
    if unseen is not None:
        print(f"\nModels and PCA baselines fitted on {args.chip.name}; probe and MAE on {args.probe_chip.name} (unseen).")
    print_table(rows, mae, seeds, f"{args.probe_chip.name} (unseen)" if unseen is not None else "the held-out strip")
    if args.json is not None:
        doc = {"command": " ".join(sys.argv), "config_dir": str(config_dir), "chip": str(args.chip),
               "probe_chip": str(args.probe_chip) if args.probe_chip else None, "seeds": seeds, "epochs": args.epochs,
               "cv_repeats": args.cv_repeats,
               "probe": rows, "s2_centre_mae_held_out": {str(s): v for s, v in mae.items()},
               "seconds": round(time.time() - T0, 1)}
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    log("done")


if __name__ == "__main__":
    main()
