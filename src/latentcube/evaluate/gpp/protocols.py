"""Folds of the year split and leave-one-site-out, the regressor jobs per fold and method, scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from latentcube.evaluate.gpp.config import PROTOCOL_LABELS, GPPConfig, GPPError, _years
from latentcube.evaluate.gpp.regressor import _prepare, _window_set, fit_regressor, predict_daily
from latentcube.evaluate.gpp.series import doy_climatology, doy_index, metrics
from latentcube.evaluate.gpp.sites import SiteData

# ------------------------------------------------------------------------------------- protocols


def _folds(data: Mapping[str, SiteData], protocol: str, cfg: GPPConfig) -> list[tuple[str, dict, dict]]:
    """(fold name, fit-day masks, test-day masks) per fold; masks are boolean per site and day."""
    folds = []
    if protocol == "year":
        fit = {s: np.isin(d.days.year, cfg.train_years) for s, d in data.items()}
        test = {s: np.isin(d.days.year, cfg.test_years) for s, d in data.items()}
        no_test, no_fit = not any(m.any() for m in test.values()), not any(m.any() for m in fit.values())
        if no_test or no_fit:
            have = {int(y) for d in data.values() for y in np.unique(d.days.year[np.isfinite(d.gpp)])}
            raise GPPError(_year_split_message(min(d.days[0] for d in data.values()), max(d.days[-1] for d in data.values()),
                                               sorted(have), cfg, "test" if no_test else "training"))
        folds.append(("year", fit, test))
    else:
        if len(data) < 2:
            raise GPPError(_loso_message(list(data)))
        for held in data:
            fit = {s: np.full(len(d.days), s != held) for s, d in data.items()}
            test = {s: np.full(len(d.days), s == held) for s, d in data.items()}
            folds.append((held, fit, test))
    return folds


def _year_split_message(first: pd.Timestamp, last: pd.Timestamp, have: Sequence[int], cfg: GPPConfig, which: str) -> str:
    """No site has days in the test (or training) years: the sites' period, the years with filtered GPP
    (``have``) and a split that fits."""
    asked = cfg.test_years if which == "test" else cfg.train_years
    flag = "--test-years" if which == "test" else "--train-years"
    have = sorted(have)
    head = (f"no site has days in the {which} years {_years(asked)} ({flag}): the sites' days run "
            f"{first.date()} .. {last.date()}, with filtered GPP in {', '.join(map(str, have)) or 'no year'}.")
    if len(have) >= 2:
        return (f"{head} Fix: --train-years {_years(have[:-1])} --test-years {have[-1]} (Python: "
                f"GPPConfig(train_years={tuple(have[:-1])}, test_years=({have[-1]},))).")
    return (f"{head} Fix: the year split needs GPP days in two years: cubes and tower files over more years, or "
            "leave-one-site-out only with several sites: --protocols loso (Python: GPPConfig(protocols=('loso',))).")


def _check_folds(periods: Mapping[str, pd.DatetimeIndex], gpp_days: Mapping[str, pd.DatetimeIndex], cfg: GPPConfig
                 ) -> None:
    """The checks of :func:`_folds` on each site's period (``periods``) and its days with filtered GPP, before
    anything is embedded."""
    if "loso" in cfg.protocols and len(periods) < 2:
        raise GPPError(_loso_message(list(periods)))
    if "year" in cfg.protocols:
        years = {int(y) for d in periods.values() for y in np.unique(d.year)}
        for which, asked in (("test", cfg.test_years), ("training", cfg.train_years)):
            if not years & set(asked):
                have = {int(y) for s, d in gpp_days.items() for y in np.unique(d[d.isin(periods[s])].year)}
                raise GPPError(_year_split_message(min(d[0] for d in periods.values()),
                                                   max(d[-1] for d in periods.values()), sorted(have), cfg, which))


def _loso_message(sites: Sequence[str]) -> str:
    return (f"leave-one-site-out needs at least 2 sites; the site table has {len(sites)} ({', '.join(sites)}). "
            "Fix: add sites to the table, or run the year split only: --protocols year (Python: "
            "GPPConfig(protocols=('year',))).")


def _split_es(data: Mapping[str, SiteData], fit: Mapping[str, np.ndarray], cfg: GPPConfig, salt: int
              ) -> tuple[dict, dict]:
    """Hold out ``es_fraction`` of the fit (site, year) pairs (at least one) for early stopping: whole
    site-years, so the validation days are not neighbours of training days."""
    pairs = [(s, y) for s, d in data.items() for y in np.unique(d.days.year[fit[s]])
             if np.isfinite(d.gpp[fit[s] & (d.days.year == y)]).any()]
    rng = np.random.default_rng([cfg.seed, salt])
    n = max(1, int(round(cfg.es_fraction * len(pairs)))) if len(pairs) > 1 else 0
    held = {pairs[i] for i in rng.choice(len(pairs), n, replace=False)} if n else set()
    es = {s: fit[s] & np.isin(d.days.year, [y for (ss, y) in held if ss == s]) for s, d in data.items()}
    fit2 = {s: fit[s] & ~es[s] for s in data}
    return fit2, es


def _climatology_predict(data: Mapping[str, SiteData], fit: Mapping[str, np.ndarray], target: str, cfg: GPPConfig) -> np.ndarray:
    group = [s for s in data if fit[s].any()]
    if cfg.climatology_by == "veg_type":
        same = [s for s in group if data[s].veg_type == data[target].veg_type]
        group = same or group
    dates = np.concatenate([data[s].days[fit[s]].values for s in group])
    gpp = np.concatenate([data[s].gpp[fit[s]] for s in group])
    clim = doy_climatology(dates, gpp, cfg.climatology_smooth_days)
    return clim[doy_index(data[target].days)]


def _fit_predict(job: dict[str, Any]) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """One (fold, method) job: fit on its windows, predict the daily GPP of its test sites. Module-level so
    that a process pool can run it (inputs are plain arrays)."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])  # one thread per worker process: the workers fill the cores
    model, info = fit_regressor(job["xf"], job["yf"], job["xe"], job["ye"], job["cfg"], job["window"])
    preds = {s: predict_daily(model, x, job["window"], job["cfg"].eval_stride_days) for s, x in job["x_test"].items()}
    return job["key"], preds, info


def _protocol_jobs(data: Mapping[str, SiteData], protocol: str, cfg: GPPConfig, methods: Sequence[str], window: int
                   ) -> tuple[dict[str, dict[str, np.ndarray]], list[dict[str, Any]], dict[str, tuple[str, dict]]]:
    """(predictions method -> site -> (n_days,) with the climatology already filled in, one regressor job per
    (fold, method), and each job's (method, test-day masks)). Keys are ``"<fold>/<method>"``."""
    preds = {m: {s: np.full(len(d.days), np.nan) for s, d in data.items()} for m in methods}
    y = {s: d.gpp for s, d in data.items()}
    jobs, tests = [], {}
    for k, (fold, fit, test) in enumerate(_folds(data, protocol, cfg)):
        fit2, es = _split_es(data, fit, cfg, salt=k)
        for method in methods:
            if method == "climatology":
                for s in data:
                    if test[s].any():
                        p = _climatology_predict(data, fit, s, cfg)
                        preds[method][s][test[s]] = p[test[s]]
                continue
            prep = _prepare(data, method, fit, cfg.doy_features)
            xf, yf = _window_set(prep.x, y, fit2, window, cfg.stride_days, cfg.min_target_days)
            xe, ye = _window_set(prep.x, y, es, window, cfg.stride_days, cfg.min_target_days)
            key = f"{fold}/{method}"
            tests[key] = (method, test)
            jobs.append({"key": key, "xf": xf, "yf": yf, "xe": xe, "ye": ye, "cfg": cfg, "window": window,
                         "x_test": {s: prep.x[s] for s in data if test[s].any()}})
    return preds, jobs, tests


def _run_protocols(data: Mapping[str, SiteData], runs: Mapping[str, tuple[str, int, Sequence[str]]], cfg: GPPConfig,
                   log: Callable[[str], None], pool: Any = None
                   ) -> dict[str, tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]]:
    """Daily predictions (method -> site -> (n_days,), NaN outside the test days) and fit info of every run
    ``name -> (protocol, window days, methods)``.

    Every (run, fold, method) regressor is an independent job; ``pool`` (a ``joblib.Parallel``) runs all of
    them in one batch of parallel processes (so no worker idles at the end of a short protocol), otherwise
    they run here one after another."""
    out, tests, jobs = {}, {}, []
    for name, (protocol, window, methods) in runs.items():
        preds, run_jobs, run_tests = _protocol_jobs(data, protocol, cfg, methods, window)
        out[name] = (preds, {})
        for job in run_jobs:
            jobs.append({**job, "run": name, "threads": 1 if pool else None})
            tests[(name, job["key"])] = run_tests[job["key"]]
    if pool is not None:
        from joblib import delayed

        results = pool(delayed(_fit_predict)(j) for j in jobs)
    else:
        results = map(_fit_predict, jobs)
    for job, (key, p, fi) in zip(jobs, results, strict=True):
        name = job["run"]
        method, test = tests[(name, key)]
        preds, info = out[name]
        info[key] = fi
        log(f"  {_fit_label(name, key)}: {fi['epochs']} epochs ("
            + (f"best {fi['best_epoch']}" if fi.get("n_es_windows") else "no early stopping") + f"), {fi['seconds']:.1f} s")
        for s, v in p.items():
            preds[method][s][test[s]] = v[test[s]]
    return out


def _fit_label(run: str, key: str) -> str:
    """Log label of one fit: ``year split, embedding``, ``leave-one-site-out, XX-A held out, bands``,
    ``sweep 60 d, embedding`` (``key`` is ``"<fold>/<method>"``)."""
    fold, _, method = key.rpartition("/")
    if run == "loso":
        return f"{PROTOCOL_LABELS['loso']}, {fold} held out, {method}"
    return f"{PROTOCOL_LABELS.get(run, run)}, {method}"


def _score(data: Mapping[str, SiteData], preds: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Metrics per method: overall (pooled site-days), per vegetation type (pooled), per site. Only days
    where every method has a prediction and GPP passed the filter are scored (the same days for all)."""
    common = {s: np.isfinite(d.gpp) & np.all([np.isfinite(preds[m][s]) for m in preds], axis=0) for s, d in data.items()}
    out: dict[str, Any] = {}
    for m, ps in preds.items():
        obs = {s: data[s].gpp[common[s]] for s in data}
        prd = {s: ps[s][common[s]] for s in data}
        res = {"overall": metrics(np.concatenate(list(obs.values())), np.concatenate(list(prd.values()))),
               "by_veg_type": {}, "by_site": {}}
        for v in sorted({d.veg_type for d in data.values()}):
            ss = [s for s in data if data[s].veg_type == v]
            res["by_veg_type"][v] = metrics(np.concatenate([obs[s] for s in ss]), np.concatenate([prd[s] for s in ss]))
        for s in data:
            res["by_site"][s] = metrics(obs[s], prd[s])
        out[m] = res
    return out


