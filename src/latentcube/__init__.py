"""latentcube: context-aware Sentinel-1/Sentinel-2 embedding cubes.

Data flows one way: source -> cube -> preprocess -> sampling -> model -> embed -> products -> evaluate
-> report. The names below are the public API; each is imported on first use (``import latentcube``
stays fast and loads neither torch nor Dask), as odc-stac does::

    import latentcube as lc
    world = lc.make_world(seed=0)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("latentcube")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: Public name -> the module that defines it.
_LAZY = {
    # cubes: the data model
    "new_cube": "latentcube.cube",
    "open_cube": "latentcube.cube",
    "save_cube": "latentcube.cube",
    "validate_cube": "latentcube.cube",
    # sources: real data in, or the synthetic world
    "import_cube": "latentcube.sources.importers",
    "fetch_cube": "latentcube.sources.stac",
    "make_world": "latentcube.synthetic",
    "write_world": "latentcube.synthetic",
    # training
    "TrainConfig": "latentcube.train",
    "load_train_config": "latentcube.train",
    "check_data": "latentcube.train",
    "run_training": "latentcube.train",
    "load_model": "latentcube.nn.model_file",
    # embedding cubes and products
    "embed_cube": "latentcube.embed",
    "embed_pixels": "latentcube.embed",
    "open_embedding": "latentcube.embed",
    "gapfill_embeddings": "latentcube.gapfill",
    "aggregate_embeddings": "latentcube.aggregate",
    "sample_embeddings": "latentcube.sample_points",
    "export_geotiff": "latentcube.export",
    "pca_figure": "latentcube.evaluate.maps",
    # evaluation and the report
    "evaluate_gpp": "latentcube.evaluate.gpp",
    "run_probe": "latentcube.evaluate.probe",
    "build_report": "latentcube.report",
    "run_demo": "latentcube.demo",
    "demo_config_dir": "latentcube.demo",
    "write_recipe": "latentcube.train.recipes",
    # the base of every error latentcube raises on purpose
    "LatentcubeError": "latentcube.errors",
}

__all__ = [  # literal, so linters and IDEs read it; tests check it equals _LAZY plus __version__
    "__version__", "new_cube", "open_cube", "save_cube", "validate_cube", "import_cube", "fetch_cube",
    "make_world", "write_world", "TrainConfig", "load_train_config", "check_data", "run_training",
    "load_model", "embed_cube", "embed_pixels", "open_embedding", "gapfill_embeddings", "aggregate_embeddings",
    "sample_embeddings", "export_geotiff",
    "pca_figure", "evaluate_gpp", "run_probe", "build_report", "run_demo", "demo_config_dir",
    "write_recipe", "LatentcubeError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'latentcube' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from latentcube.aggregate import aggregate_embeddings
    from latentcube.cube import new_cube, open_cube, save_cube, validate_cube
    from latentcube.demo import demo_config_dir, run_demo
    from latentcube.embed import embed_cube, embed_pixels, open_embedding
    from latentcube.errors import LatentcubeError
    from latentcube.evaluate.gpp import evaluate_gpp
    from latentcube.evaluate.maps import pca_figure
    from latentcube.evaluate.probe import run_probe
    from latentcube.export import export_geotiff
    from latentcube.gapfill import gapfill_embeddings
    from latentcube.nn.model_file import load_model
    from latentcube.report import build_report
    from latentcube.sample_points import sample_embeddings
    from latentcube.sources.importers import import_cube
    from latentcube.sources.stac import fetch_cube
    from latentcube.synthetic import make_world, write_world
    from latentcube.train import TrainConfig, check_data, load_train_config, run_training
    from latentcube.train.recipes import write_recipe
