"""Stage-1 Sentinel-2 training throughput (samples/s) with the paper-size model on this machine.

Measures a full optimisation step (forward, S2 hybrid loss, backward, gradient clipping, AdamW) on
patches (B, 11, 10, 15, 15) with ~50 % NaN (clouds), and optionally the patch loader on real cubes.

    python benchmarks/bench_training.py                 # CPU, threads = cores
    python benchmarks/bench_training.py --device cuda   # bf16 autocast on a GPU
    python benchmarks/bench_training.py --cubes world/scene_000.zarr world/scene_001.zarr
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from latentcube.heap import grow_heap_in_large_steps
from latentcube.losses import S2PretrainLoss
from latentcube.nn import SensorAutoencoder, s2_config


def step_throughput(batch: int, steps: int, device: str, bf16: bool) -> float:
    torch.manual_seed(0)
    model = SensorAutoencoder(s2_config()).to(device).train()
    loss_fn = S2PretrainLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1.5e-4, fused=True)  # as in latentcube/train/tasks.py
    x = torch.rand(batch, 11, 10, 15, 15, device=device) * 0.4
    x[torch.rand(batch, 11, 1, 15, 15, device=device).expand_as(x) < 0.5] = float("nan")
    x[:, 5, :, 7, 7] = 0.2  # the sampler guarantees a valid centre
    days = torch.cumsum(torch.randint(5, 16, (batch, 11), device=device).float(), dim=1)

    def one_step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            recon, _ = model(x, days)
        out = loss_fn(recon.float(), x, days)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):  # warm-up
        one_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def loader_throughput(cubes: list[str], batch: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    from latentcube.sampling import BlockShuffleSampler, PatchDataset, SamplingConfig

    ds = PatchDataset(cubes, config=SamplingConfig.paper("s2"), seed=0)
    loader = DataLoader(ds, batch_size=batch, sampler=BlockShuffleSampler(ds, seed=0), num_workers=workers)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["x"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 512 on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-bf16", action="store_true", help="float32 on GPU")
    parser.add_argument("--cubes", nargs="*", default=[], help="also time the patch loader on these cubes")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc at its defaults (run_training pads the heap; see latentcube/heap.py)")
    args = parser.parse_args()
    if not args.default_malloc:
        grow_heap_in_large_steps()  # what run_training does
    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    batch = args.batch or (512 if gpu else 64)
    params = sum(p.numel() for p in SensorAutoencoder(s2_config()).parameters())
    rate = step_throughput(batch, args.steps, args.device, bf16=gpu and not args.no_bf16)
    print(f"device: {torch.cuda.get_device_name() if gpu else f'cpu ({args.threads} threads)'}")
    print(f"S2 autoencoder parameters: {params:,}")
    print(f"stage-1 S2 training: {rate:,.0f} samples/s (batch {batch}, {'bf16' if gpu and not args.no_bf16 else 'fp32'})")
    print(f"target >= 100 samples/s on 2 CPU cores: ratio {rate / 100:.1f}x; authors' model ~3 samples/s: {rate / 3:,.0f}x")
    if args.cubes:
        print(f"patch loader: {loader_throughput(args.cubes, batch, args.workers):,.0f} samples/s ({args.workers} workers)")


if __name__ == "__main__":
    main()
