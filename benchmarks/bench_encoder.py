"""Encoder throughput: per-patch vs dense (shared-computation) paths for the S2, S1 and fused encoders.

Prints, for the current machine: pixel-dates/s of ``encode_scene`` (dense) and embeddings/s of
``encode_patches`` (one 15x15x11 patch per embedding, as the paper authors' pipeline does), their ratio,
FLOPs per embedding (``FlopCounterMode``: matmuls + convolutions), the achieved GFLOP/s, and the same
run's fp32 matmul peak (2048 x 2048) for reference. Also the S2 autoencoder's training throughput.

    python benchmarks/bench_encoder.py                 # CPU, 64 x 64 x 21 scene
    python benchmarks/bench_encoder.py --threads 2 --quick
    python benchmarks/bench_encoder.py --device cuda --size 256 --dates 31 --bf16

Weights are random (seeded): throughput does not depend on them. Targets (2 CPU cores): dense fused
>= 50,000 pixel-dates/s and >= 100x the per-patch path of the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, s1_config, s2_config
from latentcube.nn.info import count_flops_per_embedding, random_inputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, device, repeats) / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--size", type=int, default=64, help="scene height = width in pixels")
    ap.add_argument("--dates", type=int, default=21, help="dates in the scene (>= 11)")
    ap.add_argument("--patch-batch", type=int, default=64, help="patches per encode_patches call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only; equivalence is fp32-only)")
    ap.add_argument("--quick", action="store_true", help="32 x 32 scene, 1 repeat, small patch batch")
    ap.add_argument("--no-train", action="store_true", help="skip the training-throughput measurement")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.patch_batch = min(args.size, 32), 1, min(args.patch_batch, 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 and device.type == "cuda"
                else nullcontext())

    s1, s2 = SensorAutoencoder(s1_config()), SensorAutoencoder(s2_config())
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig()).freeze_sensor_models()
    models = {"s2": s2, "s1": s1, "fused": fused}
    for m in models.values():
        m.to(device).eval()

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    scene = (args.dates, args.size, args.size)
    results: dict = {
        "machine": {"device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_before": load, "bf16": bool(args.bf16 and device.type == "cuda")},
        "scene": {"dates": args.dates, "height": args.size, "width": args.size},
        "matmul_peak_gflops": matmul_peak(device),
        "encoders": {},
    }
    print(f"device {device}, {torch.get_num_threads()} threads, load average {load}")
    print(f"fp32 matmul peak (2048^2): {results['matmul_peak_gflops']:.1f} GFLOP/s")
    print(f"scene {args.dates} dates x {args.size} x {args.size}, patch batch {args.patch_batch}")
    header = (f"{'encoder':8s} {'dense px-d/s':>14s} {'patch emb/s':>12s} {'ratio':>8s} "
              f"{'dense FLOP/emb':>15s} {'patch FLOP/emb':>15s} {'dense GFLOP/s':>14s} {'% peak':>7s}")
    print(header)
    n_pix = args.dates * args.size * args.size
    for name, model in models.items():
        # Counted on the benchmarked scene itself: the 7-pixel NaN halo makes dense FLOPs per pixel
        # depend (mildly) on the scene size.
        flops = count_flops_per_embedding(model, scene=scene)
        xs, days = random_inputs(model, scene=scene)
        xp, dp = random_inputs(model, batch=args.patch_batch)
        with torch.inference_mode(), autocast:
            t_dense = timed(lambda m=model, x=xs, d=days: m.encode_scene(x, d), device, args.repeats)
            t_patch = timed(lambda m=model, x=xp, d=dp: m.encode_patches(x, d), device, args.repeats)
        dense_rate, patch_rate = n_pix / t_dense, args.patch_batch / t_patch
        gflops = flops["dense"] * dense_rate / 1e9
        row = {"dense_pixel_dates_per_s": dense_rate, "patch_embeddings_per_s": patch_rate,
               "ratio": dense_rate / patch_rate, "flops_per_embedding": flops,
               "dense_gflops": gflops, "dense_fraction_of_peak": gflops / results["matmul_peak_gflops"],
               "patch_gflops": flops["patch"] * patch_rate / 1e9}
        results["encoders"][name] = row
        print(f"{name:8s} {dense_rate:14,.0f} {patch_rate:12,.1f} {row['ratio']:8,.0f} {flops['dense']:15,.0f} "
              f"{flops['patch']:15,.0f} {gflops:14.2f} {100 * row['dense_fraction_of_peak']:6.1f}%")

    if not args.no_train:
        model = SensorAutoencoder(s2_config()).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = 32 if not args.quick else 8
        x, days = random_inputs(model, batch=batch)

        def step():
            recon, _ = model(x, days)
            valid = torch.isfinite(x)
            loss = ((recon - torch.nan_to_num(x)) ** 2 * valid).sum() / valid.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with autocast:
            t = timed(step, device, args.repeats)
        results["train_s2_samples_per_s"] = batch / t
        print(f"S2 autoencoder training (fwd+bwd+AdamW, batch {batch}): {batch / t:,.1f} samples/s")
    results["machine"]["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after: {results['machine']['loadavg_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
