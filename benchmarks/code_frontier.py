"""How much can any per-pixel-date code of k numbers gain on the probe while staying pixel-exact?

Issue 24 asks two things of one embedding on the WorldCereal chip of ``../shared/data``: beat PCA-k of
the spectrum by >= 0.03 balanced accuracy (crop type, seasonal protocol) *and* reconstruct the centre
pixel within 1.5x PCA-k's MAE. This script measures the trade-off between the two without training the
models, on codes whose construction is known:

- ``PCA-k``: the pixel's spectrum projected on the top k directions (fitted on the training strip);
- ``PCA-k -> n x n mean, lam``: ``lam * code + (1 - lam) * NaN-mean of the code over n x n pixels``,
  the linear way a code can carry its neighbourhood (lam = 0: the neighbourhood mean alone);
- ``AE-k``: a per-pixel nonlinear autoencoder (MLP, k-d bottleneck, MAE loss) of the spectrum: what
  nonlinearity alone, without context, buys a linear probe;
- contextual ``AE-k``: the same autoencoder whose encoder also reads the pixel's 5 x 5 NaN-mean
  spectrum; optionally it also decodes that mean (a field-level target), or its first m code dims are
  fixed to PCA-m of that mean: what nonlinearity *with* context buys.

Each row: the probe of ``latentcube.evaluate.probe.run_probe`` (seasonal NaN-medians of each third of
the 2019 dates, logistic regression, 16-px block CV, 5 folds, seeds 0, 1, 2: block grid shifted and
folds shuffled by the seed, as ``real_probe.py``), and the S2 centre MAE (reflectance) on the held-out
east strip of a least-squares linear decode of the spectrum from the code fitted on the training strip
(for AE-k also its own decoder's MAE), with the ratio to PCA-k's. Autoencoder rows train one model per
seed and probe model s with fold seed s (as ``real_probe.py`` pairs training and probe seeds). Labels are
read only by the probe.

    python benchmarks/code_frontier.py                  # imports the chip into a temporary folder
    python benchmarks/code_frontier.py --work /tmp/rp   # reuse real_probe.py's work folder (chip.zarr)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_probe import CHIP, VAL, import_chip, log  # noqa: E402  (same chip, import and split)

SEEDS = (0, 1, 2)
BOUND = 1.5  # the MAE bound, as a multiple of PCA-k's


def _masks(clear: np.ndarray, x_train: int) -> tuple[np.ndarray, np.ndarray]:
    cols = np.arange(clear.shape[-1])[None, None, :]
    return clear & (cols < x_train), clear & (cols >= x_train)


def nanmean_filter(z: np.ndarray, size: int) -> np.ndarray:
    """NaN-mean of ``z (T, k, H, W)`` over ``size x size`` pixels; NaN where the pixel itself is NaN."""
    from scipy.ndimage import uniform_filter

    ok = np.isfinite(z)
    num = uniform_filter(np.where(ok, z, 0.0), size=(1, 1, size, size), mode="nearest")
    den = uniform_filter(ok.astype(np.float32), size=(1, 1, size, size), mode="nearest")
    return np.where(ok, num / np.maximum(den, 1e-6), np.nan).astype(np.float32)


class Frontier:
    def __init__(self, cube_path: Path):
        from latentcube.cube import open_cube
        from latentcube.splits import spatial_split

        self.ds = open_cube(cube_path).load()
        self.s2 = self.ds["s2"].values.astype(np.float32)  # (T, C, H, W) reflectance, NaN = cloud
        T, C, H, W = self.s2.shape
        _, cols = spatial_split(H, W, {"val": VAL}, patch=1)["val"]
        self.pix = self.s2.transpose(0, 2, 3, 1)  # (T, H, W, C)
        self.clear = np.isfinite(self.pix).all(-1)
        self.train, self.held_out = _masks(self.clear, cols.start)
        self.rows: list[dict] = []

    def codes(self, transform, k: int) -> np.ndarray:
        flat = self.pix.reshape(-1, self.pix.shape[-1])
        ok = np.isfinite(flat).all(1)
        z = np.full((flat.shape[0], k), np.nan, np.float32)
        z[ok] = transform(flat[ok])
        T, H, W = self.clear.shape
        return z.reshape(T, H, W, k).transpose(0, 3, 1, 2)

    def linear_mae(self, z: np.ndarray) -> float:
        zz = z.transpose(0, 2, 3, 1)
        fit = self.train & np.isfinite(zz).all(-1)
        test = self.held_out & np.isfinite(zz).all(-1)
        coef, *_ = np.linalg.lstsq(np.c_[zz[fit], np.ones(fit.sum())], self.pix[fit], rcond=None)
        return float(np.abs(np.c_[zz[test], np.ones(test.sum())] @ coef - self.pix[test]).mean())

    def probe(self, z: np.ndarray, sets=("embedding_seasonal",), seeds=SEEDS) -> dict[str, tuple[float, list[float]]]:
        import xarray as xr

        from latentcube.evaluate.probe import run_probe

        k = z.shape[1]
        names = [f"s2_{i}" for i in range(k)]
        emb = xr.Dataset({"embedding": (("time", "feature", "y", "x"), z.astype(np.float32))},
                         coords={"time": self.ds.time, "feature": names, "y": self.ds.y, "x": self.ds.x},
                         attrs={"feature_names": json.dumps(names), "sensors": '["s2"]'})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = run_probe(emb, self.ds, labels="croptype", seeds=list(seeds), feature_sets=list(sets),
                          classifiers=["logreg"], block_px=16, folds=5, embedding_features=names,
                          pca_fit=self.ds, pca_spatial_split={"val": VAL})
        t = t[t["metric"] == "balanced_accuracy"]
        return {r["features"]: (float(r["mean"]), [float(v) for v in r["per_seed"]]) for _, r in t.iterrows()}

    def add(self, name: str, k: int, z: np.ndarray, ref_mae: float | None):
        (acc, per_seed), = self.probe(z).values()
        mae = self.linear_mae(z)
        row = {"code": name, "k": k, "balanced_accuracy": acc, "per_seed": per_seed, "linear_mae": mae,
               "own_mae": None, "mae_ratio": mae / ref_mae if ref_mae else 1.0}
        self.rows.append(row)
        log(f"{name:32s} {acc:.3f} {np.round(per_seed, 3)} MAE {mae:.5f}")
        return row

    def add_trained(self, name: str, k: int, train, ref_mae: float) -> dict:
        """One model per seed (``train(seed) -> (code, own MAE)``), model s probed with fold seed s."""
        per_seed, own = [], []
        for seed in SEEDS:
            z, mae = train(seed=seed)
            (acc, _), = self.probe(z, seeds=(seed,)).values()
            per_seed.append(acc)
            own.append(mae)
        row = {"code": name, "k": k, "balanced_accuracy": float(np.mean(per_seed)), "per_seed": per_seed,
               "linear_mae": None, "own_mae": float(np.mean(own)), "own_mae_per_seed": own,
               "mae_ratio": float(np.mean(own)) / ref_mae}
        self.rows.append(row)
        log(f"{name:32s} {row['balanced_accuracy']:.3f} {np.round(per_seed, 3)} MAE {row['own_mae']:.5f}")
        return row


def autoencoder_codes(f: Frontier, k: int, steps: int, seed: int, context: np.ndarray | None = None,
                      mean_weight: float = 0.0, field_dims: int = 0) -> tuple[np.ndarray, float]:
    """MLP autoencoder (encoder 10 [+ 10] -> 128 -> 128 -> k, decoder k -> 128 -> 128 -> 10), MAE in reflectance.

    ``context`` (T, H, W, C): a neighbourhood-mean spectrum the encoder also reads; ``mean_weight``: weight of
    a second decoder's MAE on that mean; ``field_dims``: that many code dims fixed to PCA of the mean
    (standardised), the rest learned. Written here rather than with a library: the bottleneck, the
    reflectance-scaled MAE and the fixed dims are the experiment.
    """
    import torch
    from sklearn.decomposition import PCA

    from latentcube.process_state import restored_process_state

    with restored_process_state():
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        ctx = f.pix if context is None else context  # only read when context is given
        mu, sd = f.pix[f.train].mean(0), f.pix[f.train].std(0)
        scale = torch.tensor(sd)
        field = PCA(field_dims).fit(ctx[f.train]) if field_dims else None
        fsd = field.transform(ctx[f.train]).std(0) if field else None

        def inputs(pix: np.ndarray, near: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            p, c = torch.tensor((pix - mu) / sd), torch.tensor((near - mu) / sd)
            fixed = torch.tensor(field.transform(near) / fsd, dtype=torch.float32) if field else None
            return p, c, fixed

        def mlp(a: int, b: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Linear(a, 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                                       torch.nn.GELU(), torch.nn.Linear(128, b))

        c = f.pix.shape[-1]
        enc = mlp(c if context is None else 2 * c, k - field_dims)
        dec, dec_mean = mlp(k, c), mlp(k, c)

        def code(p: torch.Tensor, near: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
            z = enc(p if context is None else torch.cat([p, near], 1))
            return z if fixed is None else torch.cat([fixed, z], 1)

        x, xc, xf = inputs(f.pix[f.train], ctx[f.train])
        v, vc, vf = inputs(f.pix[f.held_out], ctx[f.held_out])
        params = [*enc.parameters(), *dec.parameters(), *(dec_mean.parameters() if mean_weight else [])]
        opt = torch.optim.Adam(params, 2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (512,), generator=gen)
            z = code(x[idx], xc[idx], None if xf is None else xf[idx])
            loss = ((dec(z) - x[idx]).abs() * scale).mean()
            if mean_weight:
                loss = loss + mean_weight * ((dec_mean(z) - xc[idx]).abs() * scale).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            own = float(((dec(code(v, vc, vf)) - v).abs() * scale).mean())
            flat, near = f.pix.reshape(-1, c), ctx.reshape(-1, c)
            ok = np.isfinite(flat).all(1) & np.isfinite(near).all(1)
            out = np.full((flat.shape[0], k), np.nan, np.float32)
            out[ok] = code(*inputs(flat[ok], near[ok])).numpy()
            T, H, W = f.clear.shape
    return out.reshape(T, H, W, k).transpose(0, 3, 1, 2), own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder holding (or to hold) chip.zarr")
    parser.add_argument("--ae-steps", type=int, default=4000, help="optimiser steps of each per-pixel autoencoder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    if not CHIP.is_dir():
        print(f"code_frontier: skipped, the WorldCereal chip is absent ({CHIP}).")
        return
    from sklearn.decomposition import PCA

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        f = Frontier(import_chip(work))
        base = f.probe(f.codes(PCA(1).fit(f.pix[f.train]).transform, 1), sets=("raw_seasonal",))
        log(f"raw S2 bands, seasonal: {base['raw_seasonal'][0]:.3f} {np.round(base['raw_seasonal'][1], 3)}")
        for k in (7, 9):
            pca = PCA(k).fit(f.pix[f.train])
            z = f.codes(pca.transform, k)
            ref = f.add(f"PCA-{k}", k, z, None)["linear_mae"]
            for size in (3, 5):
                zm = nanmean_filter(z, size)
                for lam in (0.75, 0.5, 0.0):
                    f.add(f"PCA-{k} -> {size}x{size} mean, lam {lam}", k, lam * z + (1 - lam) * zm, ref)
            near = nanmean_filter(f.s2, 5).transpose(0, 2, 3, 1)  # (T, H, W, C) 5 x 5 NaN-mean spectra
            ae = partial(autoencoder_codes, f, k, args.ae_steps)
            f.add_trained(f"AE-{k} (per pixel, nonlinear)", k, ae, ref)
            f.add_trained(f"AE-{k} reading its 5x5 mean", k, partial(ae, context=near), ref)
            f.add_trained(f"AE-{k} reading and decoding its 5x5 mean", k,
                          partial(ae, context=near, mean_weight=1.0), ref)
            f.add_trained(f"PCA-3 of the 5x5 mean + AE-{k - 3}", k, partial(ae, context=near, field_dims=3), ref)
    print(f"\nCrop type, seasonal, balanced accuracy (mean over seeds {list(SEEDS)}); raw S2 10 bands "
          f"{base['raw_seasonal'][0]:.3f}. MAE: S2 centre, reflectance, held-out strip.")
    print("| code | k | balanced accuracy | seeds | centre MAE | x PCA-k | within 1.5x |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in f.rows:
        mae = r["own_mae"] if r["own_mae"] is not None else r["linear_mae"]
        print(f"| {r['code']} | {r['k']} | {r['balanced_accuracy']:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in r['per_seed'])} | {mae:.5f} | {r['mae_ratio']:.2f} | "
              f"{'yes' if r['mae_ratio'] <= BOUND else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps({"raw_seasonal": base["raw_seasonal"], "rows": f.rows}, indent=1))


if __name__ == "__main__":
    main()
