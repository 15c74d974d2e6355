"""How well can a *per-date* linear code do on a stage's own objective, next to baseline (a)?

Issue 6 asks every trained model to beat baseline (a), a weighted PCA of whole 11-date patches with the
model's total code size (11 x latent). The model's code is per date: ``latent`` numbers per date, from
the same encoder at every date. This script fits linear autoencoders with both structures by gradient
descent on the stage's own loss (the weighted MAE for S1), on the demo world's training split, and
scores them on its validation split:

- ``joint``: any linear map of the whole patch to 11 x latent numbers and back ((a)'s structure,
  fitted to the MAE instead of the squared error; starts from (a));
- ``per-date``: one linear map of a date's patch to ``latent`` numbers and back, the same at every date
  ((c)'s structure; starts from (c));
- ``time-equivariant``: the code of date k is ``sum_j A[j - k] x_j`` over the window's dates and the
  reconstruction of date j is ``sum_k B[j - k] z_k``: every code may read every date, as the model's
  temporal attention does, but each date's code is computed by the same function of its neighbours,
  as the dense product requires (starts from (c)).

    python benchmarks/linear_bounds.py                  # S1, makes the demo world in a temporary folder
    python benchmarks/linear_bounds.py --world demo-output/world --stage s1 --steps 1500

Prints train and validation objectives and their ratio to (a) on validation. Not a test: the fits
take ~2 minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from latentcube.demo import demo_config_dir
from latentcube.evaluate.reconstruction import _date_pca, _loss_means, _patch_pca, collect
from latentcube.losses import context_weights
from latentcube.nn.linear_init import top_basis, weighted_date_pca
from latentcube.train import CubeDataModule, load_train_config, loss_module, normalization_of

LATENT = {"s1": 2, "s2": 9}


class LinearCode(torch.nn.Module):
    """Linear autoencoder of (N, T, F) patches (F = bands x pixels) with one of three code structures."""

    def __init__(self, kind: str, n_dates: int, n_features: int, latent: int, mean: torch.Tensor):
        super().__init__()
        self.kind, self.T, self.F = kind, n_dates, n_features
        if kind == "joint":
            self.enc = torch.nn.Parameter(torch.zeros(n_dates * n_features, n_dates * latent))
            self.dec = torch.nn.Parameter(torch.zeros(n_dates * latent, n_dates * n_features))
        else:  # one kernel per date offset j - k (only offset 0 for the per-date code)
            n_off = 2 * n_dates - 1 if kind == "time-equivariant" else 1
            self.enc = torch.nn.Parameter(torch.zeros(n_off, n_features, latent))
            self.dec = torch.nn.Parameter(torch.zeros(n_off, latent, n_features))
        k, j = torch.meshgrid(torch.arange(n_dates), torch.arange(n_dates), indexing="ij")
        self.register_buffer("offset", j - k + n_dates - 1)  # [k, j] -> index of offset j - k
        self.mean = torch.nn.Parameter(mean.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), self.T, self.F)
        xc = torch.where(torch.isfinite(flat), flat, self.mean) - self.mean  # invalid -> the mean
        if self.kind == "joint":
            rec = (xc.reshape(len(x), -1) @ self.enc @ self.dec).reshape(len(x), self.T, self.F)
        elif self.kind == "per-date":
            rec = xc @ self.enc[0] @ self.dec[0]
        else:
            z = torch.einsum("njf,kjfl->nkl", xc, self.enc[self.offset])
            rec = torch.einsum("nkl,jklf->njf", z, self.dec[self.offset.T])
        return (rec + self.mean).reshape(x.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(LATENT), default="s1")
    parser.add_argument("--world", type=Path, default=None, help="a written demo world (default: make one)")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps per fit (batch 256)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        world = args.world
        if world is None:
            from latentcube.synthetic import make_world, write_world

            world = Path(tmp) / "world"
            write_world(make_world(seed=0), world)
        cfg = load_train_config(demo_config_dir() / f"{args.stage}.yaml")
        # The demo configs name their cubes world/<scene>.zarr; read the same scenes from ``world``.
        cubes = [str(world.resolve() / Path(cube).name) for cube in cfg.data.cubes]
        cfg = replace(cfg, out_dir=str(Path(tmp) / "run"), data=replace(cfg.data, cubes=cubes))
        data = CubeDataModule(cfg, normalization_of(cfg), base_dir=world)
        data.setup("fit")
        train_set, val_set = data.dataset("train"), data.dataset("val")
        train_set.set_epoch(0)
        tr = collect(train_set, ("x", "days"), max_items=3000)
        va = collect(val_set, ("x", "days"), max_items=2000)
    loss_fn = loss_module(cfg)
    n, t, c, h, w = tr["x"].shape
    latent, f = LATENT[args.stage], c * h * w
    weights = context_weights(t, h, w)
    flat = tr["x"].reshape(n, t, f)
    mean = torch.nan_to_num(torch.nanmean(flat, dim=0), nan=0.0)
    centred = torch.where(torch.isfinite(flat), flat, mean) - mean

    def objective(fn, split) -> float:
        with torch.no_grad():
            rec = torch.cat([fn(split["x"][i : i + 256]) for i in range(0, len(split["x"]), 256)])
        return _loss_means(loss_fn, rec, split["x"], split["days"])["objective"]

    rows = {
        "(a) patch PCA": (objective(lambda x: _patch_pca(tr["x"], x, t * latent, weights), tr),
                          objective(lambda x: _patch_pca(tr["x"], x, t * latent, weights), va)),
        "(c) per-date PCA": (objective(lambda x: _date_pca(tr["x"], x, latent, weights), tr),
                             objective(lambda x: _date_pca(tr["x"], x, latent, weights), va)),
    }
    date_basis, date_scale = weighted_date_pca(centred.double().reshape(n, t, c, h, w), weights.double(), latent)
    for kind in ("joint", "per-date", "time-equivariant"):
        model = LinearCode(kind, t, f, latent, mean)
        with torch.no_grad():  # start from the PCA of the same structure
            if kind == "joint":
                sw = weights.double().sqrt()[:, None].expand(t, c, h, w).reshape(-1)
                basis = top_basis(centred.double().reshape(n, -1) * sw, t * latent)
                model.enc.copy_(basis * sw[:, None])
                model.dec.copy_(basis.T / sw)
            else:
                at = 0 if kind == "per-date" else t - 1  # offset 0
                model.enc[at].copy_(date_basis * date_scale[:, None])
                model.dec[at].copy_(date_basis.T / date_scale.clamp(min=1e-30))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
        draw = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, n, (256,), generator=draw)
            loss = loss_fn(model(tr["x"][idx]), tr["x"][idx], tr["days"][idx]).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        rows[f"{kind} linear code, MAE fit"] = (objective(model, tr), objective(model, va))
        print(f"fitted {kind} in {time.perf_counter() - t0:.0f} s", flush=True)
    ref = rows["(a) patch PCA"][1]
    print(f"\n{args.stage}: {n} train / {len(va['x'])} validation patches, {t} dates x {latent} latent")
    print(f"{'code':36s} {'train':>8s} {'validation':>10s} {'val / (a)':>9s}")
    for name, (a, b) in rows.items():
        print(f"{name:36s} {a:8.4f} {b:10.4f} {b / ref:9.2f}")
    if args.out:
        args.out.write_text(json.dumps({name: {"train": a, "val": b} for name, (a, b) in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
