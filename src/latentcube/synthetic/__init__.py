"""A simulated Sentinel-1/Sentinel-2 world with flux towers: the project's embedded default dataset.

:func:`make_world` builds, from one seed, cubes in the data model (``latentcube.cube``) of landscapes in
parcels and patches, their optical and radar time series (phenology, crop calendars, mowing, clouds and
shadows, snow, soil moisture, speckle) and, for flux-tower sites, daily GPP from a light-use-efficiency
model driven by the *same* simulated canopy state. :func:`write_world` writes it as Zarr cubes,
FLUXNET2015 daily (DD) CSV files and ``towers.csv``. docs/synthetic.md gives every parameter and why.

Spectra, backscatter and flux magnitudes are hand-set to typical published values for Central Europe
(C-band gamma0 of water/grass/forest/urban, S2 signatures of vegetation, soil, water, snow; GPP peaks of
flux sites); they are plausible, not fitted to any one place.

This package imports only :mod:`latentcube.constants` and :mod:`latentcube.cube`. Modules: ``config``
(settings, result), ``_tables`` (hand-set tables), ``_landscape``, ``_weather``, ``_vegetation``,
``_sensors``, ``_flux`` (towers and FLUXNET files), ``_build`` (:func:`make_world`, :func:`write_world`).
"""


from latentcube.synthetic._build import make_world, write_world
from latentcube.synthetic._flux import fluxnet_dd_filename, write_fluxnet_dd
from latentcube.synthetic._tables import FLUXNET_DD_COLUMNS, VEG_TYPE_CLASS
from latentcube.synthetic.config import World, WorldConfig

__all__ = [
    "FLUXNET_DD_COLUMNS",
    "VEG_TYPE_CLASS",
    "World",
    "WorldConfig",
    "fluxnet_dd_filename",
    "make_world",
    "write_fluxnet_dd",
    "write_world",
]
