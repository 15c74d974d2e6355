"""latentcube: context-aware Sentinel-1/Sentinel-2 embedding cubes.

Data flows one way: source -> cube -> preprocess -> sampling -> model -> embed -> evaluate.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentcube")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
