"""Library and on-disk format versions."""

__version__ = "0.1.0"
# Bumped when a saved config / sparsifier state / checkpoint sidecar changes shape.
CONFIG_VERSION = 1
