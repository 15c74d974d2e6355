"""What ``latentcube info`` and ``latentcube model-info`` show, as library calls.

:func:`describe_cube` and :func:`describe_models` return plain dicts (the ``--json`` output);
:func:`cube_rows` and :func:`model_rows` turn them into the (label, text) rows of the tables people read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentcube.cube import CubeError, cube_summary, open_cube, validate_cube

__all__ = ["cube_rows", "describe_cube", "describe_models", "model_rows"]


def describe_cube(path: str | Path) -> dict[str, Any]:
    """Dimensions, dates, valid fractions, CRS and value ranges of a cube or embedding store, and
    ``valid``: "yes", "no: <the validation error>", or what kind of store it is."""
    ds = open_cube(path)
    if "embedding" in ds.data_vars:  # an embedding store (latentcube embed), not an input cube
        from latentcube.embed import embedding_summary

        summary = {**cube_summary(ds), **embedding_summary(path)}
        summary["valid"] = "embedding store (output of `latentcube embed`), not an input cube"
        return summary
    summary = cube_summary(ds)
    try:
        validate_cube(ds)
        summary["valid"] = "yes"
    except CubeError as err:
        summary["valid"] = f"no: {err}"
    return summary


def _valid_share(s: dict[str, Any]) -> str:
    return f"mean {s['valid_fraction_mean']:.3f}; {s['dates_valid_ge_50pct']} dates >= 50 % valid"


def _bounds(b: tuple[float, ...]) -> str:
    """``bounds`` in full CRS units, with the convention (edges, not the pixel centres of x/y)."""
    return ", ".join(f"{v:.10g}" for v in b) + " (pixel edges: xmin, ymin, xmax, ymax)"


def _percentiles(values: list[float]) -> str:
    return " / ".join(f"{v:.4g}" for v in values)


def cube_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows of ``latentcube info``'s table for a :func:`describe_cube` result."""
    if "features" in summary:  # embedding store
        keys = ("valid", "model", "crs", "dims", "pixel_size_m", "bounds", "blocks_written", "stored_as")
        rows = [(k, _bounds(summary[k]) if k == "bounds" else str(summary[k])) for k in keys if k in summary]
        rows += [("dates", f"{summary['dates']} ({summary['first']} .. {summary['last']}; {summary['axis']})"),
                 ("features", " ".join(summary["features"])), ("valid fraction", _valid_share(summary))]
        if summary.get("dates_without_valid_pixel"):
            empty = summary["dates_without_valid_pixel"]
            rows.append(("dates without data", f"{len(empty)} (all NaN: cloud or nodata everywhere): "
                         + ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")))
        if summary["value_p1_p50_p99"]:
            rows.append(("p1/p50/p99", _percentiles(summary["value_p1_p50_p99"])))
        return [*rows, ("variables", ", ".join(summary["variables"]))]
    rows = [(k, _bounds(summary[k]) if k == "bounds" else str(summary[k]))
            for k in ("valid", "crs", "dims", "pixel_size_m", "bounds") if k in summary]
    for var in ("s2", "s1"):
        if var in summary:
            s = summary[var]
            rows += [(f"{var} dates", f"{s['dates']} ({s['first']} .. {s['last']})"),
                     (f"{var} bands", " ".join(s["bands"])), (f"{var} valid fraction", _valid_share(s))]
            if s["value_p1_p50_p99"]:
                rows.append((f"{var} p1/p50/p99", _percentiles(s["value_p1_p50_p99"])))
            if s.get("model_bands"):
                rows.append((f"{var} vs model", s["model_bands"]))
    rows.append(("variables", ", ".join(summary["variables"])))
    dropped = summary.get("attrs", {}).get("import_dropped_variables")
    if dropped:
        rows.append(("dropped at import", f"{dropped} (S2 file variables not recognised as a band or SCL; if one "
                                          "is a band, re-import with --band-map VARIABLE=BAND)"))
    return rows


def describe_models(checkpoint: str | Path | None = None, *, sensor: str = "all", flops: bool = True) -> dict[str, Any]:
    """Parameters, FLOPs per embedding and latent sizes of a model file, or of the default models
    (``sensor``: s1, s2, fused or all) when ``checkpoint`` is None."""
    from latentcube.config import ConfigError
    from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, model_info, s1_config, s2_config

    report: dict[str, Any] = {}
    if checkpoint is not None:
        from latentcube.nn.model_file import load_model

        model, meta = load_model(checkpoint)
        report["checkpoint"] = {k: meta[k] for k in ("format", "kind", "band_order", "dates_convention",
                                                      "latentcube_version", "normalization", "metrics") if k in meta}
        report["checkpoint"]["config"] = meta.get("config")
        report["model"] = model_info(model, flops=flops)
        return report
    s1, s2 = SensorAutoencoder(s1_config()), SensorAutoencoder(s2_config())
    presets = {"s1": lambda: s1, "s2": lambda: s2,
               "fused": lambda: FusionModel({"s1": s1, "s2": s2}, FusionConfig()).freeze_sensor_models()}
    if sensor not in (*presets, "all"):
        raise ConfigError(f"unknown preset {sensor!r}. Fix: use s1, s2, fused or all.")
    for name in presets if sensor == "all" else [sensor]:
        report[name] = model_info(presets[name](), flops=flops)
    return report


def model_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows (model, parameters, latent sizes, dense and per-patch FLOPs) of ``latentcube model-info``."""
    rows = []
    for name, info in report.items():
        if name == "checkpoint":
            continue
        fl = info.get("flops_per_embedding") or {}
        rows.append((name, f"{info['parameters']['total']:,} ({info['parameters']['trainable']:,})",
                     json.dumps(info["latent_sizes"]), f"{fl['dense']:,.0f}" if fl else "-",
                     f"{fl['patch']:,.0f}" if fl else "-"))
    return rows
