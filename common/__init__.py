"""Task-agnostic core of cdcl: dataset-specific modules, DAT training, metrics, config.

Nothing in this package imports :mod:`cdcl2d` or :mod:`cdcl3d`; those fill the
registries in :mod:`common.registry` when their plugin is loaded.
"""
__version__ = "0.1.0"
