"""Sensor profiles: what a LiDAR's range image needs, as data.

A profile is a dict of :class:`~cdcl3d.projection.RangeProjection`'s fields
(``height``, ``width``, ``fov_up``/``fov_down`` *or* a per-beam
``elevations`` table in degrees, ``use_ring``/``ring_flip``, ``means``/``stds``
of the five input channels, ``ego_radius``) plus ``intensity_scale`` and
``mount_height`` (:data:`~cdcl3d.projection.PROFILE_ONLY`).

``data.<name>.sensor`` in a config is one of::

    sensor: hdl64                                  # a preset by name
    sensor: {preset: pandora, width: 1800}         # a preset with changes
    sensor: {height: 32, width: 1024, fov_up: 15, fov_down: -15,
             means: [...], stds: [...]}            # on top of the type's default

Without ``preset`` the fields change the dataset type's default profile
(:attr:`cdcl3d.datasets.specs.LidarDatasetSpec.sensor`). ``cdcl sensor-stats``
measures ``means``/``stds`` on a dataset (:mod:`cdcl3d.sensor_stats`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .projection import KITTI_SENSOR, NUSCENES_SENSOR, PANDORA_SENSOR, PROFILE_ONLY, RangeProjection

#: name -> profile; :func:`register_sensor` adds one
SENSORS: Dict[str, Dict[str, Any]] = {"hdl64": KITTI_SENSOR, "hdl32": NUSCENES_SENSOR, "pandora": PANDORA_SENSOR}

#: every key a profile may hold and its type (``preset`` names the one it starts from)
FIELDS: Dict[str, Any] = {
    "preset": str, "height": int, "width": int, "fov_up": float, "fov_down": float,
    "elevations": List[float], "use_ring": bool, "ring_flip": bool, "means": List[float],
    "stds": List[float], "ego_radius": float, "intensity_scale": float, "mount_height": Optional[float],
}


def register_sensor(name: str, profile: Dict[str, Any]) -> None:
    """Add a preset that ``data.<name>.sensor: NAME`` can name; checked here."""
    if name in SENSORS and SENSORS[name] is not profile:
        raise KeyError(f"sensor preset {name!r} is already registered")
    RangeProjection.from_sensor(profile)  # ValueError for a profile that cannot project
    SENSORS[name] = dict(profile)


def resolve_sensor(spec: Any, default: Optional[str], where: str = "sensor", source: str = "") -> Dict[str, Any]:
    """The profile that ``spec`` (a preset name, a dict, or None) describes,
    starting from the preset ``default`` (the dataset type's; None: the spec
    must name one or give every field). Raises
    :class:`~common.config.ConfigError` naming ``where`` for an unknown preset
    or key and for a profile that cannot project."""
    from common.config import ConfigError, check_options

    at = f"{source}: " if source else ""
    if spec is None:
        spec = {}
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}'{where}' must be a preset name ({', '.join(SENSORS)}) or a mapping, got {spec!r}")
    check_options(spec, FIELDS, where, source)
    preset = spec.get("preset", default)
    if preset is not None and preset not in SENSORS:
        raise ConfigError(f"{at}'{where}' names the sensor preset {preset!r}; presets: {', '.join(SENSORS)}")
    profile = dict(SENSORS[preset]) if preset is not None else {}
    fields = {k: v for k, v in spec.items() if k != "preset"}
    if "elevations" in fields:  # a beam table replaces the linear field of view, and sets the height
        profile.pop("fov_up", None), profile.pop("fov_down", None)
        if "height" not in fields and isinstance(fields["elevations"], (list, tuple)):
            fields["height"] = len(fields["elevations"])
    elif "fov_up" in fields or "fov_down" in fields:
        profile.pop("elevations", None)
    profile.update(fields)
    try:
        RangeProjection.from_sensor(profile)
    except (TypeError, ValueError) as exc:
        what = f"preset {preset!r} with " if preset is not None else ""
        raise ConfigError(f"{at}'{where}' ({what}{fields or 'no fields'}) is not a usable sensor: {exc}") from None
    return profile
