"""Model cards: ``MODEL_CARD.md`` and ``model_card.json`` beside every trained ``model.pt``.

``write_model_card(model)`` gathers what a user of a model needs before trusting its embeddings: the
model file (sha256, kind, stage, latent size, parameters), the data it was trained on (cubes with their
split, dates and size, bands, normalisation, pixel size, sampling), the objective and settings (loss
overrides, optimiser, epochs, warm start, seed), metrics on each split (train and validation at the
best validation epoch from ``metrics.csv``, test from ``test_metrics.json``), the land-cover probe and
PCA-baseline comparisons when a probe result or baseline scores are given (or found in the run
folder), intended use, limits and a licence field. The JSON is the machine-readable card; the Markdown
renders it. Training writes both when it saves ``model.pt``; ``latentcube model-info MODEL`` prints the
card (and writes it when missing or made for another model file). See docs/training.md#model-card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from latentcube import __version__
from latentcube.files import atomic_write_text, file_sha256

__all__ = ["CARD_FORMAT", "CARD_JSON", "CARD_MD", "card_markdown", "model_card", "resolve_model", "write_model_card"]

#: /2: the model's own bands (``model.bands``, ``model.n_bands``) in every text; a /1 card (which said "10 bands"
#: whatever the model read) is rewritten by ``model-info``.
CARD_FORMAT = "latentcube-model-card/2"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
#: Where the probe writes its result in a run folder (``run_probe(..., run_dir=...)``).
PROBE_JSON = Path("evaluation") / "probe" / "probe.json"
UNSPECIFIED_LICENCE = ("unspecified: set `licence:` in the training config (e.g. `licence: CC-BY-4.0`) or pass "
                       "`latentcube model-info MODEL --licence ...`")


def _band_list(names: list[str], n: int, noun: str = "band") -> str:
    """``"3 bands: B04, B08, B11"`` (``"3 bands"`` when the model file has no band names)."""
    return f"{n} {noun}{'s' if n != 1 else ''}" + (f": {', '.join(names)}" if names else "")


def _sensor_text(sensor: str, bands: Mapping[str, list[str]], n_bands: Mapping[str, int]) -> str:
    """The input of one sensor as the model reads it, e.g. ``"Sentinel-2 L2A reflectance (3 bands: B04, B08, B11)"``."""
    names, n = list(bands.get(sensor) or []), int(n_bands.get(sensor) or 0)
    if sensor == "s1":
        return f"Sentinel-1 {'/'.join(names)} backscatter" if names else f"Sentinel-1 backscatter ({_band_list(names, n)})"
    return f"Sentinel-2 L2A reflectance ({_band_list(names, n)})"


def _stage_text(stage: str, bands: Mapping[str, list[str]], n_bands: Mapping[str, int]) -> str | None:
    def short(sensor: str) -> str:  # "3 reflectance bands: B04, B08, B11", "VV, VH backscatter"
        names, n = list(bands.get(sensor) or []), int(n_bands.get(sensor) or 0)
        if sensor == "s1":
            return f"{', '.join(names)} backscatter" if names else _band_list(names, n, "backscatter band")
        return _band_list(names, n, "reflectance band")

    if stage in ("s1", "s2"):
        return f"stage 1: Sentinel-{stage[1]} autoencoder ({short(stage)})"
    if stage == "fusion":
        inputs = "; ".join(f"{s.upper()}: {short(s)}" for s in ("s2", "s1") if s in n_bands)
        return f"stage 2: S1 + S2 fusion on the frozen stage-1 encoders and decoders ({inputs})"
    return None


def resolve_model(path: str | Path) -> Path:
    """The ``model.pt`` of ``path``: the file itself, or ``<path>/model.pt`` for a run folder."""
    path = Path(path)
    model = path / "model.pt" if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"no model file at {model}. Fix: pass a model.pt written by training or its run folder.")
    return model


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


#: The warm-started model and its validation score, in the run folder (a candidate for ``model.pt``).
WARM_START_FILE = "warm_start.pt"


def _warm_start_score(run: Path) -> float | None:
    path = run / WARM_START_FILE
    if not path.is_file():
        return None
    import torch

    return _finite(torch.load(path, map_location="cpu", weights_only=True).get("score"))


def _split_metrics(run: Path, monitor: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per-split metrics at the best epoch, training summary) from ``metrics.csv``; when the warm start
    beat every epoch (training then keeps it as ``model.pt``), its validation score instead."""
    path = run / "metrics.csv"
    if not path.is_file():
        return {}, {}
    df = pd.read_csv(path)
    if "epoch" not in df:
        return {}, {}
    per_epoch = df.dropna(subset=["epoch"]).groupby("epoch").first()  # each column's logged value per epoch
    if per_epoch.empty:
        return {}, {}
    best = per_epoch[monitor].idxmin() if monitor in per_epoch and per_epoch[monitor].notna().any() else per_epoch.index[-1]
    out: dict[str, Any] = {}
    for col, value in per_epoch.loc[best].items():
        split, _, name = str(col).partition("/")
        if split in ("train", "val") and name and _finite(value) is not None:
            out.setdefault(split, {})[name] = _finite(value)
    summary = {"epochs": int(per_epoch.index.max()) + 1, "steps": int(df["step"].max()) if "step" in df else None,
               "best_epoch": int(best), "selected_by": f"lowest {monitor}" if monitor in per_epoch else "last epoch"}
    warm, best_score = _warm_start_score(run), _finite(per_epoch[monitor].min()) if monitor in per_epoch else None
    if warm is not None and (best_score is None or warm <= best_score):  # the rule of train.run
        split, _, name = monitor.partition("/")
        out = {split: {name: warm}}
        summary.update(best_epoch=None, selected_by=f"lowest {monitor}: the warm start ({warm:.4g}) beat every "
                                                    f"epoch ({'-' if best_score is None else f'{best_score:.4g}'})")
    return out, summary


def _locate(path: str, bases: list[Path]) -> Path:
    """A config path as training read it: absolute, else under the first of ``bases`` that holds it."""
    p = Path(path)
    if p.is_absolute():
        return p
    return next((b / p for b in bases if (b / p).exists()), p)


def _cube_facts(path: str, bases: list[Path]) -> dict[str, Any]:
    """Dates, size, source of one training cube (``found: false`` when it is not at that path any more)."""
    p = _locate(path, bases)
    facts: dict[str, Any] = {"path": str(path), "found": p.exists()}
    if not p.exists():
        return facts
    try:
        from latentcube.cube import open_cube

        ds = open_cube(p)
    except Exception as err:  # noqa: BLE001 - a card still gets written; the reason is in it
        facts["error"] = str(err)
        return facts
    facts["size_px"] = [int(ds.sizes.get("y", 0)), int(ds.sizes.get("x", 0))]
    for var, tdim in (("s2", "time"), ("s1", "time_s1")):
        if var in ds.data_vars and tdim in ds.coords and ds.sizes.get(tdim):
            t = pd.DatetimeIndex(ds[tdim].values)
            facts[f"{var}_dates"] = {"n": len(t), "first": str(t.min().date()), "last": str(t.max().date())}
    if ds.attrs.get("source"):
        facts["source"] = str(ds.attrs["source"])
    return facts


def _cubes(cfg: Mapping[str, Any], bases: list[Path]) -> list[dict[str, Any]]:
    data = cfg.get("data") or {}
    paths = [str(c) for c in data.get("cubes") or []]
    if data.get("cube_dir"):
        folder = _locate(str(data["cube_dir"]), bases)
        paths += [str(p) for p in sorted(folder.glob("*.zarr")) if str(p) not in paths]
    split_of: dict[str, str] = {}
    for split, ids in (data.get("splits") or {}).items():
        for cube_id in ids or []:
            split_of[str(cube_id)] = str(split)
    out = []
    for path in paths:
        facts = _cube_facts(path, bases)
        facts["split"] = split_of.get(Path(path).stem) or ("strips (spatial_split)" if data.get("spatial_split") else
                                                           "from the site plan" if data.get("plan") else None)
        out.append(facts)
    return out


def _probe_summary(probe: Any) -> dict[str, Any] | None:
    """Balanced accuracy and macro F1 per feature set and classifier from a probe JSON (``run_probe``)."""
    doc = _read_json(Path(probe)) if isinstance(probe, (str, Path)) else probe
    if not isinstance(doc, Mapping) or not doc.get("results"):
        return None
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in doc["results"]:
        key = (str(r.get("features")), str(r.get("classifier")))
        row = rows.setdefault(key, {"features": key[0], "classifier": key[1]})
        row[str(r.get("metric"))] = {"mean": _finite(r.get("mean")), "std": _finite(r.get("std"))}
    settings = doc.get("settings") or {}
    return {"source": str(probe) if isinstance(probe, (str, Path)) else None,
            "labels": settings.get("labels"), "date": settings.get("date"), "n_pixels": settings.get("n_pixels"),
            "folds": settings.get("folds"), "seeds": settings.get("seeds"),
            "ratio_embedding_over_raw": doc.get("ratio_embedding_date_over_raw_date"), "rows": list(rows.values())}


def _baselines(baselines: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validation scores of the model and of its PCA baselines (``compare_with_baselines``), JSON-safe."""
    if not baselines:
        return None
    out: dict[str, Any] = {}
    for name, scores in baselines.items():
        if isinstance(scores, Mapping):
            out[str(name)] = {str(k): _finite(v) for k, v in scores.items() if _finite(v) is not None}
        elif isinstance(scores, bool):
            out[str(name)] = scores
    return out


def _licence(licence: str | None, cfg: Mapping[str, Any]) -> str:
    return str(licence or cfg.get("licence") or UNSPECIFIED_LICENCE)


def _use_and_limits(facts: Mapping[str, Any], cubes: list[dict[str, Any]], pixel: float | None,
                    training: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    kind, stage, bands, n_bands = facts["kind"], facts["stage"], facts["bands"], facts["n_bands"]
    if stage in ("s1", "s2"):
        sensors = _sensor_text(stage, bands, n_bands)
    elif stage == "fusion":
        sensors = " with ".join(_sensor_text(s, bands, n_bands) for s in ("s2", "s1") if s in n_bands)
        if "s1" in n_bands and "s2" in n_bands:
            sensors += " matched to each S2 date"
    else:
        sensors = "the cubes' sensors"
    use = [f"Embed cubes of {sensors} in the latentcube data model (docs/data-model.md) with `latentcube embed`: one "
           "embedding per pixel and date, for linear probes, clustering, change and phenology analysis, gap-filled or "
           "window summaries (`gapfill`, `aggregate`) and point sampling (`sample`).",
           f"Pixel size {pixel:g} m, as trained (embedding another resolution warns)." if pixel else
           "Pixel size as the training cubes (not recorded in the model file)."]
    first = [c[f"{s}_dates"]["first"] for c in cubes for s in ("s2", "s1") if f"{s}_dates" in c]
    last = [c[f"{s}_dates"]["last"] for c in cubes for s in ("s2", "s1") if f"{s}_dates" in c]
    synthetic = any(str(c.get("source", "")).startswith("latentcube.synthetic") for c in cubes)
    by_split: dict[str, int] = {}
    for c in cubes:
        if c.get("split") in ("train", "val", "test"):
            by_split[c["split"]] = by_split.get(c["split"], 0) + 1
    counted = f" ({', '.join(f'{n} {k}' for k, n in by_split.items())})" if by_split else ""
    limits = [
        f"Trained on {len(cubes)} cube(s){counted}" + (f" dated {min(first)} .. {max(last)}" if first else "")
        + ": other regions, seasons, years or sensor processing baselines are outside what was seen; check the "
          "quality layer (`embed --quality`) and a probe on your own labels before relying on the embeddings.",
        "Features are not physical quantities and their axes are specific to this model file: embeddings of two "
        "models (or two trainings) cannot be compared feature by feature.",
        "NaN embeddings where the centre pixel has no valid input on that date (clouds, no data); gap filling "
        "interpolates them, it does not observe them.",
    ]
    if synthetic:
        limits.insert(0, "Trained on the synthetic demo world (latentcube.synthetic): a pipeline check, not a model "
                         "for real Sentinel data.")
    if training.get("epochs") is not None and int(training["epochs"]) < 5:
        limits.append(f"A short run ({training['epochs']} epoch(s)): the metrics describe an early model.")
    if "the warm start" in str(training.get("selected_by", "")):
        limits.append("The model is its linear warm start (`warm_start: pca`): no epoch of training beat it on the "
                      "validation split, so it is a linear code of each patch, not a learned nonlinear one.")
    s2_latent, s2_bands = (facts.get("latent_sizes") or {}).get("s2"), int(n_bands.get("s2") or 0)
    if s2_latent and s2_bands and int(s2_latent) > s2_bands:
        names = ", ".join(bands.get("s2") or [])
        limits.append(f"The S2 code has more dimensions ({s2_latent}) than the model has input bands ({s2_bands}"
                      + (f": {names}" if names else "") + "): its features are partly redundant (they can add spatial "
                      "and temporal context, not spectral information), so expect correlated features.")
    if kind == "fusion":
        limits.append("The fusion model needs S1 within the matching gap of the S2 dates; where S1 is missing the "
                      "S1 part is embedded as absent.")
    return use, limits


def _model_bands(meta: Mapping[str, Any], model: Any) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The input bands of each sensor of the loaded model, ``({sensor: names}, {sensor: count})``: its configs'
    ``n_bands`` and ``band_names``, else the file's ``band_order``."""
    from latentcube.nn import FusionModel

    configs = {name: m.config for name, m in model.sensors.items()} if isinstance(model, FusionModel) else \
        {model.config.sensor: model.config}
    order = meta.get("band_order") or {}
    bands = {s: [str(b) for b in (c.band_names or order.get(s) or [])] for s, c in configs.items()}
    return bands, {s: int(c.n_bands) for s, c in configs.items()}


def _model_normalisation(norm: Any, bands: Mapping[str, list[str]]) -> Any:
    """The file's normalisation cut to the bands the model reads (the saved table holds every band of each
    sensor, also those of a sensor it does not read); as saved when the band names are not known."""
    if not isinstance(norm, Mapping):
        return norm
    out = dict(norm)
    for key, sensor in (("s2", "s2"), ("s1_db", "s1")):
        table = norm.get(key)
        if not isinstance(table, Mapping):
            continue
        if sensor not in bands:
            out.pop(key)
        elif bands[sensor]:
            out[key] = {b: table[b] for b in bands[sensor] if b in table}
    return out


def _model_facts(model_path: Path, meta: Mapping[str, Any], model: Any) -> dict[str, Any]:
    from latentcube.nn import model_info

    info = model_info(model, flops=False)
    cfg = meta.get("config") or {}
    kind = str(meta.get("kind"))
    stage = str(cfg.get("stage") or (info.get("sensor") if kind == "autoencoder" else "fusion"))
    latent = info["latent_sizes"].get("fused") if kind == "fusion" else next(iter(info["latent_sizes"].values()))
    bands, n_bands = _model_bands(meta, model)
    stat = model_path.stat()
    return {"file": model_path.name, "sha256": file_sha256(model_path), "size_bytes": stat.st_size,
            "modified": pd.Timestamp(stat.st_mtime, unit="s", tz="UTC").isoformat(timespec="seconds"),
            "format": meta.get("format"), "kind": kind, "stage": stage,
            "stage_description": _stage_text(stage, bands, n_bands), "bands": bands, "n_bands": n_bands,
            "latent_size": latent, "latent_sizes": info["latent_sizes"],
            "parameters": {k: v for k, v in info["parameters"].items() if k != "per_submodule"},
            "patch_size": info.get("patch_size"), "n_dates": info.get("n_dates"),
            "trained_with": f"latentcube {meta.get('latentcube_version')}", "dates_convention": meta.get("dates_convention")}


def build_model_card(model: str | Path, *, probe: str | Path | Mapping[str, Any] | None = None,
                     baselines: Mapping[str, Any] | None = None, licence: str | None = None,
                     base_dir: str | Path | None = None) -> dict[str, Any]:
    """The card of ``model`` (a ``model.pt`` or its run folder) as a JSON-safe dict (see the module docstring).

    ``probe``: a probe result (``probe.json`` path or its dict; default ``<run>/evaluation/probe/probe.json``
    when present). ``baselines``: the model's and the PCA baselines' validation scores, e.g. the demo's
    reconstruction comparison ``{"model": {...}, "patch_pca": {...}, "date_pca": {...}}``. ``licence``:
    overrides the config's ``licence``. ``base_dir``: the folder relative cube paths of the config are
    relative to (training's ``base_dir``); without it they are looked up under the run folder's parents.
    """
    from latentcube.nn.model_file import load_model

    model_path = resolve_model(model)
    run = model_path.parent
    net, meta = load_model(model_path)
    cfg = meta.get("config") or {}
    facts = _model_facts(model_path, meta, net)
    optim = cfg.get("optim") or {}
    metrics, training = _split_metrics(run, str(optim.get("monitor", "val/center_mae")))
    test = _read_json(run / "test_metrics.json")
    if isinstance(test, Mapping):
        split = str(test.get("split", "test"))
        metrics[f"{split} (test_metrics.json)" if split != "test" else "test"] = {
            k.partition("/")[2]: _finite(v) for k, v in test.items() if "/" in k and _finite(v) is not None}
        metrics["units"] = test.get("units")
    if not metrics and meta.get("metrics"):  # no metrics.csv beside the model: what the model file recorded
        for k, v in meta["metrics"].items():
            split, _, name = k.partition("/")
            if split in ("train", "val") and _finite(v) is not None:
                metrics.setdefault(split, {})[name] = _finite(v)
    if probe is None and (run / PROBE_JSON).is_file():
        probe = run / PROBE_JSON
    bases = ([Path(base_dir)] if base_dir is not None else []) + [run, *run.resolve().parents]
    cubes = _cubes(cfg, bases)
    use, limits = _use_and_limits(facts, cubes, meta.get("pixel_size_m"), training)
    data = cfg.get("data") or {}
    return {
        "format": CARD_FORMAT,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "written_by": f"latentcube {__version__}",
        "model": facts,
        "data": {"cubes": cubes, "splits": data.get("splits"), "spatial_split": data.get("spatial_split"),
                 "site_plan": data.get("plan"), "bands": facts["bands"],
                 "normalisation": _model_normalisation(meta.get("normalization"), facts["bands"]),
                 "pixel_size_m": meta.get("pixel_size_m"),
                 "sampling": data.get("sampling") or {}, "batch_size": data.get("batch_size")},
        "objective": {"stage": facts["stage"], "loss_overrides": cfg.get("loss") or {},
                      "loss": "reconstruction of the patch series: centre-weighted MAE + SSIM (+ SAM for S2) "
                              "(docs/method-losses.md); stage-1 checkpoints frozen in fusion",
                      "monitor": optim.get("monitor"), "optimiser": optim, "trainer": cfg.get("trainer") or {},
                      "warm_start": cfg.get("warm_start"), "seed": cfg.get("seed"),
                      "stage1_checkpoints": cfg.get("checkpoints") or None, "model_overrides": cfg.get("model") or {}},
        "training": training,
        "metrics": metrics,
        "evaluation": {"probe": _probe_summary(probe) if probe is not None else None,
                       "reconstruction_baselines": _baselines(baselines)},
        "intended_use": use,
        "limitations": limits,
        "licence": _licence(licence, cfg),
        "config": cfg,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows], ""]


def card_markdown(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the card rendered as Markdown."""
    m, d, o = card["model"], card["data"], card["objective"]
    lines = [f"# Model card: latentcube {m['stage']} model ({m['file']})", "",
             f"{m.get('stage_description') or m['kind']}. {m['latent_size']}-d embedding per pixel and date; "
             f"{m['parameters'].get('total', 0):,} parameters; input {m.get('n_dates')} dates x "
             f"{m.get('patch_size')} x {m.get('patch_size')} px patches.", "",
             f"- sha256: `{m['sha256']}` ({m['size_bytes']:,} bytes, {m['modified']})",
             f"- trained with {m['trained_with']}; card written by {card['written_by']} on {card['created']}",
             f"- licence: {card['licence']}", "", "## Training data", ""]
    rows = []
    for c in d["cubes"]:
        dates = "; ".join(f"{s.upper()} {c[f'{s}_dates']['n']} dates {c[f'{s}_dates']['first']} .. "
                          f"{c[f'{s}_dates']['last']}" for s in ("s2", "s1") if f"{s}_dates" in c)
        size = "x".join(map(str, c["size_px"])) if "size_px" in c else ("not found" if not c.get("found") else "-")
        rows.append([c["path"], c.get("split"), size, dates or "-"])
    lines += _md_table(["cube", "split", "size (px)", "dates"], rows) if rows else ["(no cubes recorded)", ""]
    lines += [f"- bands: {json.dumps(d['bands'])}", f"- normalisation: `{json.dumps(d['normalisation'])}`",
              f"- pixel size: {_fmt(d['pixel_size_m'])} m; sampling: `{json.dumps(d['sampling'])}`; batch size "
              f"{_fmt(d['batch_size'])}", "", "## Objective and settings", "",
              f"- {o['loss']}; loss overrides `{json.dumps(o['loss_overrides'])}`",
              f"- model selection: {card['training'].get('selected_by', '-')} (best epoch "
              f"{_fmt(card['training'].get('best_epoch'))} of {_fmt(card['training'].get('epochs'))}, "
              f"{_fmt(card['training'].get('steps'))} steps)",
              f"- optimiser: `{json.dumps(o['optimiser'])}`", f"- warm start: {_fmt(o['warm_start'])}; seed "
              f"{_fmt(o['seed'])}" + (f"; stage-1 models `{json.dumps(o['stage1_checkpoints'])}`"
                                      if o.get("stage1_checkpoints") else ""), "", "## Metrics", ""]
    splits = [s for s in card["metrics"] if s != "units"]
    names = sorted({k for s in splits for k in card["metrics"][s]})
    if names:
        lines += _md_table(["metric", *splits], [[n, *[card["metrics"][s].get(n) for s in splits]] for n in names])
        units = card["metrics"].get("units")
        lines += ["Normalised units" + (f" except `center_mae_physical` ({', '.join(f'{k}: {v}' for k, v in units.items())})"
                                        if units else "") + "; train and validation at the selected epoch.", ""]
    else:
        lines += ["(no metrics found beside the model file)", ""]
    ev = card["evaluation"]
    if ev.get("reconstruction_baselines"):
        b = ev["reconstruction_baselines"]
        scored = [k for k, v in b.items() if isinstance(v, Mapping)]
        keys = [k for k in ("objective", "center_mae", "context_mae") if any(k in b[s] for s in scored)]
        lines += ["## Against PCA baselines (validation)", ""]
        lines += _md_table(["method", *keys], [[s, *[b[s].get(k) for k in keys]] for s in scored])
    if ev.get("probe"):
        p = ev["probe"]
        lines += ["## Land-cover probe", "", f"Labels `{p.get('labels')}`, {p.get('n_pixels')} pixels, date "
                  f"{p.get('date')}, spatially blocked {p.get('folds')}-fold cross-validation; embedding against raw "
                  "bands and the PCA code of the same inputs.", ""]
        lines += _md_table(["features", "classifier", "balanced accuracy", "macro F1"],
                           [[r["features"], r["classifier"],
                             *[f"{_fmt((r.get(k) or {}).get('mean'))} ± {_fmt((r.get(k) or {}).get('std'))}"
                               for k in ("balanced_accuracy", "macro_f1")]] for r in p["rows"]])
    lines += ["## Intended use", "", *[f"- {u}" for u in card["intended_use"]], "", "## Limitations", "",
              *[f"- {u}" for u in card["limitations"]], "",
              f"Machine-readable: `{CARD_JSON}` (full training config under `config`).", ""]
    return "\n".join(lines)


def write_model_card(model: str | Path, **kwargs: Any) -> tuple[Path, Path]:
    """Write ``MODEL_CARD.md`` and ``model_card.json`` beside ``model`` (``model.pt`` or its run folder);
    returns their paths. Keyword arguments as :func:`build_model_card`."""
    model_path = resolve_model(model)
    card = build_model_card(model_path, **kwargs)
    js, md = model_path.parent / CARD_JSON, model_path.parent / CARD_MD
    atomic_write_text(js, json.dumps(card, indent=1, default=str) + "\n")
    atomic_write_text(md, card_markdown(card))
    return md, js


def model_card(model: str | Path, *, licence: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The card of ``model`` (``model.pt`` or run folder): read from ``model_card.json`` when it describes this
    very file (same sha256) and nothing new is asked, else written first (``latentcube model-info``).
    The returned dict has the Markdown under ``"markdown"`` and the card's paths under ``"paths"``."""

    model_path = resolve_model(model)
    card = _read_json(model_path.parent / CARD_JSON)
    fresh = isinstance(card, Mapping) and card.get("format") == CARD_FORMAT and \
        (card.get("model") or {}).get("sha256") == file_sha256(model_path)
    if not fresh or licence or kwargs:
        write_model_card(model_path, licence=licence, **kwargs)
        card = _read_json(model_path.parent / CARD_JSON)
    md = model_path.parent / CARD_MD
    if not md.is_file():
        atomic_write_text(md, card_markdown(card))
    return {**card, "markdown": md.read_text(encoding="utf-8"),
            "paths": {"markdown": str(md), "json": str(model_path.parent / CARD_JSON)}}
