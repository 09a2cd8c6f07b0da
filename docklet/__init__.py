"""Docklet: a Docker-first, GitOps-style, pull-based container deployer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("docklet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

API_VERSION = "v1"

__all__ = ["API_VERSION", "__version__"]
