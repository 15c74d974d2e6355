"""``latentcube`` commands for models: configs, model-info, train, embed, plot-training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli import _table, app, console, out


@app.command()
def configs(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="area (one area on CPU, recommended) | demo | paper.")] = "area",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write s1.yaml, s2.yaml, fusion.yaml into.")] = Path("."),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing stage configs there.")] = False,
) -> None:
    """Copy a recipe's three stage configs (shipped with the package) into a folder to edit and train with."""
    from latentcube.train.recipes import write_recipe

    for path in write_recipe(recipe, out_dir, overwrite=overwrite):
        out.print(path)


@app.command("model-info")
def model_info_(
    checkpoint: Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help="A model file (model.pt) or its run folder: prints its model card, written beside it when missing. Omit to describe a preset.")] = None,
    sensor: Annotated[str, typer.Option(help="Preset when no checkpoint: s1 | s2 | fused | all.")] = "all",
    no_flops: Annotated[bool, typer.Option("--no-flops", help="Skip the FLOP count (presets).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (the card's JSON for a model).")] = False,
    licence: Annotated[str | None, typer.Option("--licence", help="Record this licence in the model's card (rewrites it).")] = None,
) -> None:
    """A trained model's card (data, settings, metrics, use, limits, licence), or parameters, FLOPs per
    embedding and latent sizes of the default models."""
    if checkpoint is not None:
        from latentcube.model_card import model_card

        card = model_card(checkpoint, licence=licence)
        if as_json:
            out.print_json(json.dumps({k: v for k, v in card.items() if k != "markdown"}, default=str))
        else:
            out.print(card["markdown"])
        return
    from latentcube.describe import describe_models, model_rows

    report = describe_models(None, sensor=sensor, flops=not no_flops)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    out.print(_table("latentcube models", model_rows(report), header=(
        "model", "parameters (trainable)", "latent sizes", "FLOPs/embedding dense", "FLOPs/embedding per-patch")))


@app.command()
def train(
    stage: Annotated[str, typer.Argument(metavar="STAGE", help="s1 | s2 | fusion")],
    config: Annotated[Path, typer.Option("--config", help="Stage YAML (see configs/).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Override the config's out_dir.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (e.g. 2); default from config.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu | gpu | auto.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override trainer.max_steps.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only index the data: print patches per split and stop.")] = False,
) -> None:
    """Train one stage; re-running the same command resumes from the last checkpoint."""
    from dataclasses import replace

    from latentcube.train import check_data, load_train_config, run_training

    cfg = load_train_config(config)
    if cfg.stage != stage:
        raise typer.BadParameter(f"{config} is a {cfg.stage!r} config, not {stage!r}")
    trainer_changes = {k: v for k, v in dict(devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator,
                                              max_epochs=max_epochs, max_steps=max_steps).items() if v is not None}
    cfg = replace(cfg, trainer=replace(cfg.trainer, **trainer_changes))
    if out_dir is not None:
        cfg = replace(cfg, out_dir=str(out_dir))
    if check:  # the split sizes a run would see and the band check, without training
        for split, n in check_data(cfg).items():
            where = "strips of " if n["strips"] else ""
            out.print(f"{split}: {n['patches']} patches from {where}{n['cubes']} cube(s) ({n['rejected']} candidates rejected)")
        return
    summary = run_training(cfg)
    if "model" in summary:
        out.print(f"model: {summary['model']}")
        metrics = summary.get("test_metrics") or {}
        split = metrics.get("split", "test")  # "val" when the config holds no test split (test_metrics.json)
        if metrics:
            out.print(f"held-out {split} split" + (" (the config has no test split):" if split == "val" else ":"))
        for k, v in metrics.items():
            if isinstance(v, float):
                out.print(f"  {split}/{k.removeprefix('test/')}: {v:.5g}")


@app.command()
def embed(
    cube: Annotated[Path, typer.Argument(metavar="CUBE", help="A cube (*.zarr or *.nc).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model file from training (model.pt): fusion or autoencoder.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output Zarr store; re-running the same command resumes it.")],
    block_px: Annotated[int, typer.Option("--block-px", help="Block edge in pixels: unit of parallelism, resume and storage chunks.")] = 256,
    dtype: Annotated[str, typer.Option(help="float32 | float16 (relative error <= 4.9e-4) | int8 (per pixel-date scale, error <= scale/2); read any with latentcube.embed.open_embedding.")] = "float32",
    quality: Annotated[bool, typer.Option("--quality/--no-quality", help="Also write quality_s2/quality_s1 (time, y, x): centre-pixel reconstruction error (reflectance / dB); ~10x the embedding cost on CPU.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address (tcp://host:8786) or 'synchronous'; default: a local cluster, or this process when that would have one worker (a GPU, under 4 cores) or one block is left.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Local-cluster workers (default: one per 2 CPU cores within 80 % of the free memory, 1 with a GPU).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads per worker (default: the cores over the workers).")] = None,
    sensors: Annotated[str | None, typer.Option(help="Comma-separated: fused,s1,s2 (default: fused; an autoencoder's own sensor).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda | cpu (default: cuda when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start again instead of resuming an existing output.")] = False,
    allow_missing_s1: Annotated[bool, typer.Option("--allow-missing-s1", help="Embed with a fusion model although S1 covers none of the cube (S1 then counts as absent).")] = False,
) -> None:
    """Embed every pixel and date of CUBE (Zarr embedding cube, resumable, parallel over blocks)."""
    from latentcube.embed import dates_without_valid_pixel, embed_cube

    chosen = [s.strip() for s in sensors.split(",") if s.strip()] if sensors else None
    path = embed_cube(cube, checkpoint, out_path, block_px=block_px, dtype=dtype, quality=quality, scheduler=scheduler,
                      n_workers=workers, threads_per_worker=threads, sensors=chosen, device=device, overwrite=overwrite,
                      allow_missing_s1=allow_missing_s1)
    out.print(str(path))
    empty = dates_without_valid_pixel(path)
    if empty:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        console.print(f"note: {len(empty)} of the store's dates have no valid pixel (cloud or nodata over the whole "
                      f"cube): {shown}. They are kept, all NaN, so the dates match the cube's; `latentcube gapfill` "
                      "fills them where clear dates lie on both sides.", markup=False, highlight=False, soft_wrap=True)


@app.command("plot-training")
def plot_training_(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A training output directory (has metrics.csv).")],
    out_path: Annotated[Path | None, typer.Option("--out", help="PNG path (default RUN/training_curves.png).")] = None,
) -> None:
    """Draw train/validation curves of every loss part (the paper's Fig. 5)."""
    from latentcube.evaluate.curves import plot_training

    out.print(str(plot_training(run, out_path)))
