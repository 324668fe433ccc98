"""A procedural street world: ground classes, buildings, vegetation, vehicles, people.

Everything is described by analytic primitives (see :mod:`cdcl3d.synth.raycast`)
tagged with a *kind* -- an internal class that is finer than both datasets'
taxonomies, so that each dataset's labels are one table lookup away
(:data:`KINDS`: SemanticKITTI raw id, nuScenes-lidarseg fine index and
SemanticPOSS raw id per kind).

A world is one street segment along +x: road (with lane markings), optional
parking lanes, sidewalks, verges of grass or paving, then a frontage of
buildings, gardens with fences and hedges, parks and parking lots, with
cross streets now and then. The sensor drives along the road. The styles
(:data:`KITTI_STYLE`, :data:`NUSCENES_STYLE`, :data:`POSS_STYLE`) differ in
layout (a suburban, green Karlsruhe; a dense Boston/Singapore downtown; a
university campus) and object mix (more pedestrians, buses, barriers and cones
in the city; crowds, groups, cyclists, parked bicycles, bins and stones on the
campus): the same builder, other parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from .raycast import BOX, CYLINDER, ELLIPSOID


@dataclass(frozen=True)
class Kind:
    """One internal class. ``remission`` is the mean reflectivity in [0, 1]."""

    name: str
    kitti: int          # SemanticKITTI raw semantic id
    nuscenes: int       # nuScenes-lidarseg fine index (category.json 'index')
    remission: float
    spread: float
    thing: bool = False  # has an instance id / a nuScenes box
    poss: int = 0       # SemanticPOSS raw id (0 unlabeled, 1 unknown)


# nuScenes fine indices (category.json 'index', the devkit colormap order).
NUSCENES_FINE = [
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone",
    "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle",
    "vehicle.trailer", "vehicle.truck", "flat.driveable_surface", "flat.other",
    "flat.sidewalk", "flat.terrain", "static.manmade", "static.other",
    "static.vegetation", "vehicle.ego",
]
_NU = {n: i for i, n in enumerate(NUSCENES_FINE)}

KINDS: List[Kind] = [
    Kind("road", 40, _NU["flat.driveable_surface"], 0.10, 0.04, poss=22),
    Kind("lane-marking", 60, _NU["flat.driveable_surface"], 0.70, 0.12, poss=22),
    Kind("parking", 44, _NU["flat.driveable_surface"], 0.14, 0.05, poss=22),
    Kind("sidewalk", 48, _NU["flat.sidewalk"], 0.22, 0.06, poss=22),
    Kind("other-ground", 49, _NU["flat.other"], 0.18, 0.06, poss=22),
    Kind("terrain", 72, _NU["flat.terrain"], 0.32, 0.10, poss=22),
    Kind("building", 50, _NU["static.manmade"], 0.28, 0.10, poss=15),
    Kind("fence", 51, _NU["static.manmade"], 0.30, 0.12, poss=17),
    Kind("other-structure", 52, _NU["static.other"], 0.30, 0.10, poss=15),
    Kind("vegetation", 70, _NU["static.vegetation"], 0.40, 0.12, poss=9),
    Kind("trunk", 71, _NU["static.vegetation"], 0.30, 0.08, poss=8),
    Kind("pole", 80, _NU["static.manmade"], 0.35, 0.10, poss=13),
    Kind("traffic-sign", 81, _NU["static.manmade"], 0.85, 0.10, poss=10),
    Kind("car", 10, _NU["vehicle.car"], 0.30, 0.15, True, poss=7),
    Kind("moving-car", 252, _NU["vehicle.car"], 0.30, 0.15, True, poss=7),
    Kind("bicycle", 11, _NU["vehicle.bicycle"], 0.25, 0.10, True, poss=21),
    Kind("bus", 13, _NU["vehicle.bus.rigid"], 0.35, 0.12, True, poss=7),
    Kind("moving-bus", 257, _NU["vehicle.bus.rigid"], 0.35, 0.12, True, poss=7),
    Kind("bendy-bus", 13, _NU["vehicle.bus.bendy"], 0.35, 0.12, True, poss=7),
    Kind("motorcycle", 15, _NU["vehicle.motorcycle"], 0.30, 0.12, True, poss=21),
    Kind("truck", 18, _NU["vehicle.truck"], 0.33, 0.12, True, poss=7),
    Kind("moving-truck", 258, _NU["vehicle.truck"], 0.33, 0.12, True, poss=7),
    Kind("other-vehicle", 20, _NU["vehicle.construction"], 0.35, 0.12, True, poss=7),
    Kind("moving-other-vehicle", 259, _NU["vehicle.construction"], 0.35, 0.12, True, poss=7),
    Kind("trailer", 20, _NU["vehicle.trailer"], 0.32, 0.10, True, poss=7),
    Kind("ambulance", 10, _NU["vehicle.emergency.ambulance"], 0.45, 0.15, True, poss=7),
    Kind("police-car", 10, _NU["vehicle.emergency.police"], 0.40, 0.15, True, poss=7),
    Kind("person", 30, _NU["human.pedestrian.adult"], 0.22, 0.08, True, poss=4),
    Kind("moving-person", 254, _NU["human.pedestrian.adult"], 0.22, 0.08, True, poss=4),
    Kind("child", 30, _NU["human.pedestrian.child"], 0.22, 0.08, True, poss=4),
    Kind("construction-worker", 30, _NU["human.pedestrian.construction_worker"], 0.55, 0.15, True, poss=4),
    Kind("police-officer", 30, _NU["human.pedestrian.police_officer"], 0.30, 0.10, True, poss=4),
    Kind("stroller", 99, _NU["human.pedestrian.stroller"], 0.25, 0.08, True, poss=1),
    Kind("wheelchair", 99, _NU["human.pedestrian.wheelchair"], 0.25, 0.08, True, poss=1),
    Kind("personal-mobility", 99, _NU["human.pedestrian.personal_mobility"], 0.25, 0.08, True, poss=1),
    Kind("bicyclist", 31, _NU["vehicle.bicycle"], 0.24, 0.08, True, poss=6),
    Kind("moving-bicyclist", 253, _NU["vehicle.bicycle"], 0.24, 0.08, True, poss=6),
    Kind("motorcyclist", 32, _NU["vehicle.motorcycle"], 0.26, 0.08, True, poss=6),
    Kind("moving-motorcyclist", 255, _NU["vehicle.motorcycle"], 0.26, 0.08, True, poss=6),
    Kind("barrier", 52, _NU["movable_object.barrier"], 0.45, 0.15, True, poss=17),
    Kind("traffic-cone", 99, _NU["movable_object.trafficcone"], 0.75, 0.12, True, poss=16),
    Kind("trash-bin", 99, _NU["movable_object.pushable_pullable"], 0.25, 0.08, True, poss=14),
    Kind("bicycle-rack", 99, _NU["static_object.bicycle_rack"], 0.35, 0.10, True, poss=1),
    Kind("debris", 99, _NU["movable_object.debris"], 0.20, 0.08, True, poss=1),
    Kind("animal", 0, _NU["animal"], 0.20, 0.06, True, poss=1),
    Kind("outlier", 1, _NU["noise"], 0.05, 0.05, poss=0),
    # the roof of the car carrying the sensor (nuScenes only; see sensors.Sensor.ego_roof)
    Kind("ego", 0, _NU["vehicle.ego"], 0.30, 0.10, poss=0),
    # campus things (the SemanticPOSS style): people too close to tell apart,
    # annotated as one "2+ persons" instance; kerb stones and bollards
    Kind("person-group", 30, _NU["human.pedestrian.adult"], 0.22, 0.08, True, poss=5),
    Kind("stone", 99, _NU["static.other"], 0.30, 0.10, True, poss=16),
]
K = {k.name: i for i, k in enumerate(KINDS)}

KITTI_OF_KIND = np.array([k.kitti for k in KINDS], np.uint32)
NUSCENES_OF_KIND = np.array([k.nuscenes for k in KINDS], np.uint8)
POSS_OF_KIND = np.array([k.poss for k in KINDS], np.uint32)
REMISSION_OF_KIND = np.array([k.remission for k in KINDS])
SPREAD_OF_KIND = np.array([k.spread for k in KINDS])


@dataclass
class Style:
    """Layout and object-mix parameters of one world style (lengths in m)."""

    name: str
    road_width: Tuple[float, float]
    lanes_each_way: Tuple[int, int]
    parking_prob: float          # per block and side: a parking lane at the kerb
    sidewalk_width: Tuple[float, float]
    verge_width: Tuple[float, float]
    verge_paved_prob: float      # verge is other-ground instead of terrain
    block_length: Tuple[float, float]
    frontage_probs: Dict[str, float]
    setback: Tuple[float, float]  # building distance behind the verge
    building_height: Tuple[float, float]
    tree_spacing: Tuple[float, float]
    tree_prob: float
    pole_spacing: Tuple[float, float]
    sign_prob: float
    parked_car_gap: Tuple[float, float]
    moving_per_100m: float
    pedestrians_per_100m: float
    cross_street_every: Tuple[float, float]
    greenery: float = 0.0        # 0..1: hedges and bushes along the frontage
    street_end: Tuple[float, float] = (40.0, 80.0)  # T-junction beyond the driven stretch
    object_mix: Dict[str, float] = field(default_factory=dict)  # extra things per 100 m
    left_hand: bool = False


KITTI_STYLE = Style(
    name="kitti",
    road_width=(5.5, 7.5),
    lanes_each_way=(1, 1),
    parking_prob=0.15,
    sidewalk_width=(2.0, 3.5),
    verge_width=(0.0, 2.0),
    verge_paved_prob=0.06,
    block_length=(18.0, 40.0),
    frontage_probs={"building": 0.62, "garden": 0.24, "park": 0.12, "parking_lot": 0.02},
    setback=(0.5, 3.5),
    building_height=(7.0, 16.0),
    tree_spacing=(4.0, 9.0),
    tree_prob=0.85,
    pole_spacing=(30.0, 50.0),
    sign_prob=0.3,
    parked_car_gap=(2.0, 14.0),
    moving_per_100m=1.2,
    pedestrians_per_100m=0.5,
    cross_street_every=(80.0, 160.0),
    street_end=(25.0, 60.0),
    greenery=0.95,
    object_mix={"truck": 0.1, "other-vehicle": 0.1, "bicycle": 0.1, "motorcycle": 0.05,
                "bicyclist": 0.03, "motorcyclist": 0.02, "trash-bin": 0.6, "barrier": 0.1},
)

NUSCENES_STYLE = Style(
    name="nuscenes",
    road_width=(9.0, 14.0),
    lanes_each_way=(1, 2),
    parking_prob=0.35,
    sidewalk_width=(3.0, 5.5),
    verge_width=(0.0, 1.5),
    verge_paved_prob=0.5,
    block_length=(20.0, 60.0),
    frontage_probs={"building": 0.70, "garden": 0.05, "park": 0.10, "parking_lot": 0.15},
    setback=(0.0, 2.0),
    building_height=(10.0, 40.0),
    tree_spacing=(9.0, 20.0),
    tree_prob=0.45,
    pole_spacing=(18.0, 30.0),
    sign_prob=0.4,
    parked_car_gap=(0.8, 5.0),
    moving_per_100m=4.0,
    pedestrians_per_100m=8.0,
    cross_street_every=(60.0, 120.0),
    street_end=(20.0, 45.0),
    greenery=0.2,
    object_mix={"bus": 0.6, "bendy-bus": 0.1, "truck": 0.5, "other-vehicle": 0.3,
                "trailer": 0.2, "bicycle": 0.8, "motorcycle": 0.5, "bicyclist": 0.4,
                "motorcyclist": 0.3, "barrier": 3.0, "traffic-cone": 3.0, "trash-bin": 1.0,
                "bicycle-rack": 0.3, "debris": 0.3, "construction-worker": 0.5,
                "police-officer": 0.2, "child": 0.8, "stroller": 0.2, "wheelchair": 0.1,
                "personal-mobility": 0.2, "animal": 0.1, "ambulance": 0.05,
                "police-car": 0.08},
    left_hand=False,
)

# A university campus as in SemanticPOSS (Peking University): narrow roads
# shared with many pedestrians (alone and in groups), cyclists and rows of
# parked bicycles; wide sidewalks, lawns, hedges and trees everywhere;
# buildings set back; bins, kerb stones and fences.
POSS_STYLE = Style(
    name="semanticposs",
    road_width=(5.0, 7.0),
    lanes_each_way=(1, 1),
    parking_prob=0.25,
    sidewalk_width=(2.5, 5.0),
    verge_width=(1.0, 4.0),
    verge_paved_prob=0.15,
    block_length=(20.0, 50.0),
    frontage_probs={"building": 0.45, "garden": 0.2, "park": 0.3, "parking_lot": 0.05},
    setback=(2.0, 8.0),
    building_height=(8.0, 25.0),
    tree_spacing=(3.0, 7.0),
    tree_prob=0.95,
    pole_spacing=(25.0, 45.0),
    sign_prob=0.25,
    parked_car_gap=(1.0, 8.0),
    moving_per_100m=1.0,
    pedestrians_per_100m=20.0,
    cross_street_every=(70.0, 150.0),
    street_end=(25.0, 50.0),
    greenery=1.0,
    object_mix={"person-group": 6.0, "bicyclist": 5.0, "bicycle-row": 3.0, "bicycle": 3.0,
                "motorcyclist": 0.5, "trash-bin": 2.0, "stone": 3.0, "traffic-cone": 0.5},
)


@dataclass
class Thing:
    """One object with an identity (nuScenes box, SemanticKITTI instance id)."""

    instance: int
    kind: int
    center: Tuple[float, float, float]
    size: Tuple[float, float, float]   # length (along yaw), width, height
    yaw: float


class World:
    """Primitives plus painted ground; see :mod:`cdcl3d.synth.raycast`."""

    def __init__(self) -> None:
        self._prims: List[List[float]] = []
        self._shapes: List[int] = []
        self._kinds: List[int] = []
        self._inst: List[int] = []
        self._rects: List[List[float]] = []
        self._rect_kinds: List[int] = []
        self.ground_default = K["terrain"]
        self.things: List[Thing] = []
        self.sensor_path: List[Tuple[float, float, float]] = []  # x, y, yaw

    # -- building blocks ---------------------------------------------------
    def ground(self, x0: float, y0: float, x1: float, y1: float, kind: str) -> None:
        """Paint a rectangle of the ground (painted later wins)."""
        self._rects.append([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
        self._rect_kinds.append(K[kind])

    def add(self, shape: int, kind: int, inst: int, c: Tuple[float, float, float],
            h: Tuple[float, float, float], yaw: float = 0.0) -> None:
        if shape == CYLINDER:
            rad = h[0]
        else:
            rad = math.hypot(h[0], h[1])
        self._prims.append([c[0], c[1], c[2], h[0], h[1], h[2], math.cos(yaw), math.sin(yaw), rad])
        self._shapes.append(shape)
        self._kinds.append(kind)
        self._inst.append(inst)

    def box(self, kind: str, inst: int, x: float, y: float, z0: float, length: float,
            width: float, height: float, yaw: float = 0.0) -> None:
        """A box standing on ``z0`` (length along ``yaw``)."""
        self.add(BOX, K[kind], inst, (x, y, z0 + height / 2), (length / 2, width / 2, height / 2), yaw)

    def new_thing(self, kind: str, x: float, y: float, z: float, size: Tuple[float, float, float],
                  yaw: float) -> int:
        inst = len(self.things) + 1
        self.things.append(Thing(inst, K[kind], (x, y, z + size[2] / 2), size, yaw))
        return inst

    # -- arrays for the ray caster ----------------------------------------
    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prims, shapes, kinds, instances, ground_rects, ground_kinds)."""
        if not hasattr(self, "_cache"):
            self._cache = (np.asarray(self._prims, np.float64).reshape(-1, 9),
                           np.asarray(self._shapes, np.int64),
                           np.asarray(self._kinds, np.int64),
                           np.asarray(self._inst, np.int64),
                           np.asarray(self._rects, np.float64).reshape(-1, 4),
                           np.asarray(self._rect_kinds, np.int64))
        return self._cache


# -- objects ------------------------------------------------------------------
def _u(rng: np.random.Generator, lohi: Tuple[float, float]) -> float:
    return float(rng.uniform(lohi[0], lohi[1]))


def _local(x: float, y: float, yaw: float, dx: float, dy: float) -> Tuple[float, float]:
    c, s = math.cos(yaw), math.sin(yaw)
    return x + c * dx - s * dy, y + s * dx + c * dy


def place_vehicle(w: World, rng: np.random.Generator, kind: str, x: float, y: float,
                  yaw: float) -> None:
    """Cars, vans, trucks, buses, trailers: a body box plus a cabin box."""
    base = kind.replace("moving-", "")
    if base in ("car", "ambulance", "police-car"):
        length, width = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.95)
        body_h, cab_h = rng.uniform(0.75, 0.95), rng.uniform(0.45, 0.6)
        if base == "ambulance":
            length, cab_h = 5.8, 1.4
        w_id = w.new_thing(kind, x, y, 0.0, (length, width, 0.25 + body_h + cab_h), yaw)
        w.box(kind, w_id, x, y, 0.25, length, width, body_h, yaw)
        cx, cy = _local(x, y, yaw, -0.15 * length, 0.0)
        w.box(kind, w_id, cx, cy, 0.25 + body_h, 0.55 * length, width * 0.92, cab_h, yaw)
        return
    if base in ("truck", "other-vehicle"):
        length, width = rng.uniform(6.0, 10.0), rng.uniform(2.3, 2.55)
        height = rng.uniform(2.8, 3.8)
        w_id = w.new_thing(kind, x, y, 0.0, (length, width, height), yaw)
        cab = 2.0
        cx, cy = _local(x, y, yaw, length / 2 - cab / 2, 0.0)
        w.box(kind, w_id, cx, cy, 0.4, cab, width, height * 0.8 - 0.4, yaw)
        bx, by = _local(x, y, yaw, -cab / 2 - 0.1, 0.0)
        w.box(kind, w_id, bx, by, 0.9, length - cab - 0.2, width, height - 0.9, yaw)
        return
    if base in ("bus", "bendy-bus", "trailer"):
        length = {"bus": rng.uniform(10.0, 12.5), "bendy-bus": 18.0, "trailer": rng.uniform(6.0, 12.0)}[base]
        width, height = 2.55, (3.2 if base != "trailer" else 3.6)
        w_id = w.new_thing(kind, x, y, 0.0, (length, width, height), yaw)
        w.box(kind, w_id, x, y, 0.35 if base != "trailer" else 1.0, length, width,
              height - (0.35 if base != "trailer" else 1.0), yaw)
        return
    raise ValueError(f"unknown vehicle kind {kind!r}")


def place_person(w: World, kind: str, x: float, y: float, height: float = 1.75) -> None:
    """An upright ellipsoid body and a sphere head."""
    w_id = w.new_thing(kind, x, y, 0.0, (0.5, 0.6, height), 0.0)
    _body(w, kind, w_id, x, y, height)


def place_group(w: World, rng: np.random.Generator, x: float, y: float, size: int) -> None:
    """``size`` people side by side, one instance of the kind ``person-group``
    (SemanticPOSS labels people too close to tell apart as "2+ persons")."""
    heading = rng.uniform(0, math.pi)
    gap = rng.uniform(0.5, 0.75)
    heights = rng.uniform(1.55, 1.9, size)
    w_id = w.new_thing("person-group", x, y, 0.0, (gap * (size - 1) + 0.5, 0.6, float(heights.max())), heading)
    for i, h in enumerate(heights):
        px, py = _local(x, y, heading, (i - (size - 1) / 2) * gap, rng.normal(0, 0.1))
        _body(w, "person-group", w_id, px, py, float(h))


def _body(w: World, kind: str, w_id: int, x: float, y: float, height: float) -> None:
    body_h = height * 0.85
    w.add(ELLIPSOID, K[kind], w_id, (x, y, body_h / 2), (0.22, 0.28, body_h / 2))
    w.add(ELLIPSOID, K[kind], w_id, (x, y, body_h + 0.12), (0.11, 0.11, 0.13))


def place_cycle(w: World, rng: np.random.Generator, kind: str, x: float, y: float,
                yaw: float) -> None:
    """Bicycles and motorcycles, with a rider for the *-ist kinds (same label,
    as both datasets annotate rider and machine together)."""
    motor = "motor" in kind
    length = 2.1 if motor else 1.75
    width = 0.7 if motor else 0.45
    frame_h = 1.1 if motor else 1.05
    rider = kind.endswith("ist")
    total_h = frame_h + (0.9 if rider else 0.0)
    w_id = w.new_thing(kind, x, y, 0.0, (length, width, total_h), yaw)
    w.box(kind, w_id, x, y, 0.0, length, width, frame_h, yaw)
    if rider:
        w.add(ELLIPSOID, K[kind], w_id, (x, y, frame_h + 0.35), (0.22, 0.28, 0.45), yaw)
        w.add(ELLIPSOID, K[kind], w_id, (x, y, frame_h + 0.92), (0.11, 0.11, 0.13))


def place_small(w: World, rng: np.random.Generator, kind: str, x: float, y: float,
                yaw: float) -> None:
    """Barriers, cones, bins, racks, debris, animals, strollers, wheelchairs..."""
    dims = {"barrier": (2.0, 0.4, 1.0), "traffic-cone": (0.4, 0.4, 0.7),
            "trash-bin": (0.6, 0.6, 1.1), "bicycle-rack": (3.0, 0.5, 0.8),
            "debris": (0.8, 0.6, 0.3), "animal": (0.8, 0.3, 0.6), "stroller": (0.9, 0.6, 1.0),
            "wheelchair": (1.0, 0.7, 1.3), "personal-mobility": (1.0, 0.5, 1.7),
            "stone": (0.6, 0.4, 0.45)}[kind]
    w_id = w.new_thing(kind, x, y, 0.0, dims, yaw)
    if kind == "traffic-cone":
        w.add(ELLIPSOID, K[kind], w_id, (x, y, 0.0), (0.2, 0.2, dims[2]))
    else:
        w.box(kind, w_id, x, y, 0.0, dims[0], dims[1], dims[2], yaw)


def place_tree(w: World, rng: np.random.Generator, x: float, y: float, scale: float = 1.0) -> None:
    trunk_h = rng.uniform(1.8, 3.5) * scale
    r_trunk = rng.uniform(0.14, 0.3) * scale
    w.add(CYLINDER, K["trunk"], 0, (x, y, trunk_h / 2 + 0.3), (r_trunk, r_trunk, trunk_h / 2 + 0.3))
    crown_r = rng.uniform(2.0, 4.5) * scale
    crown_h = crown_r * rng.uniform(1.0, 1.6)
    w.add(ELLIPSOID, K["vegetation"], 0, (x, y, trunk_h + crown_h * 0.8),
          (crown_r, crown_r * rng.uniform(0.8, 1.2), crown_h), rng.uniform(0, math.pi))


def place_pole(w: World, rng: np.random.Generator, x: float, y: float, sign: bool,
               side: int) -> None:
    height = rng.uniform(3.0, 8.0) if not sign else rng.uniform(2.5, 3.5)
    r = rng.uniform(0.05, 0.12)
    w.add(CYLINDER, K["pole"], 0, (x, y, height / 2), (r, r, height / 2))
    if sign:
        # a plate facing the road traffic, on top of the pole
        plate_w = rng.uniform(0.6, 0.9)
        plate_h = rng.uniform(0.6, 0.9)
        w.box("traffic-sign", 0, x, y, height - plate_h + 0.2, 0.05, plate_w, plate_h,
              rng.normal(0.0, 0.1))


# -- the street ---------------------------------------------------------------
def build_street(style: Style, rng: np.random.Generator, length: float) -> World:
    """A street segment along +x from 0 to ``length`` (plus margins), with the
    sensor lane in ``World.sensor_path`` (y and heading)."""
    w = World()
    margin = 90.0
    # the street ends at T-junctions before and after the driven stretch, so
    # the view down the road is closed by buildings and trees, as in a town
    x_min = -_u(rng, style.street_end)
    x_max = length + _u(rng, style.street_end)
    road_w = _u(rng, style.road_width)
    half = road_w / 2
    w.ground(x_min, -half, x_max, half, "road")
    lanes = int(rng.integers(style.lanes_each_way[0], style.lanes_each_way[1] + 1))
    lane_w = half / lanes
    # sensor lane: the kerb-side lane of one's own direction
    drive_side = 1.0 if style.left_hand else -1.0
    sensor_y = drive_side * lane_w * (lanes - 0.5)
    w.sensor_path = [(0.0, sensor_y, 0.0), (length, sensor_y, 0.0)]

    # lane markings: dashed centre line (and lane dividers), continuous edge lines
    x = x_min
    while x < x_max:
        w.ground(x, -0.07, x + 3.0, 0.07, "lane-marking")
        for k in range(1, lanes):
            for s in (-1, 1):
                w.ground(x, s * k * lane_w - 0.06, x + 3.0, s * k * lane_w + 0.06, "lane-marking")
        x += 9.0
    for s in (-1, 1):
        w.ground(x_min, s * (half - 0.35), x_max, s * (half - 0.2), "lane-marking")

    # cross streets (no frontage there)
    crossings: List[Tuple[float, float]] = []
    x = x_min + _u(rng, style.cross_street_every) * rng.uniform(0.2, 1.0)
    while x < x_max:
        cw = _u(rng, style.road_width)
        crossings.append((x - cw / 2, x + cw / 2))
        x += _u(rng, style.cross_street_every)

    def crossing_at(xa: float, xb: float) -> bool:
        return any(xa < cb + 4 and xb > ca - 4 for ca, cb in crossings)

    for side in (-1, 1):
        _build_side(w, style, rng, side, half, x_min, x_max, crossings, crossing_at)
    for x_end, direction in ((x_max, 1), (x_min, -1)):
        _street_end(w, style, rng, x_end, direction, margin)
    for ca, cb in crossings:
        w.ground(ca, -margin, cb, margin, "road")
        w.ground(ca - 0.6, -margin, ca - 0.3, -half - 2, "lane-marking")

    _populate_road(w, style, rng, half, lanes, lane_w, x_min, x_max, length, crossing_at)
    return w


def _street_end(w: World, style: Style, rng: np.random.Generator, x_end: float, direction: int,
                margin: float) -> None:
    """A T-junction at ``x_end``: the cross road, its far sidewalk, and a row of
    buildings, hedges and trees facing down the street (``direction`` = +-1)."""
    cw = _u(rng, style.road_width)
    x0 = x_end + direction * cw
    w.ground(x_end, -margin, x0, margin, "road")
    sw = _u(rng, style.sidewalk_width)
    w.ground(x0, -margin, x0 + direction * sw, margin, "sidewalk")
    e = x0 + direction * sw
    y = -margin
    while y < margin:
        bw = rng.uniform(10, 30)
        r = rng.random()
        depth = rng.uniform(10, 20)
        if r < style.frontage_probs.get("building", 0.5):
            setback = _u(rng, style.setback)
            w.box("building", 0, e + direction * (setback + depth / 2), y + bw / 2, 0.0, depth, bw - 1.0,
                  _u(rng, style.building_height))
            if setback > 1.2 and rng.random() < style.greenery:
                w.box("vegetation", 0, e + direction * setback / 2, y + bw / 2, 0.0, setback * 0.6,
                      bw - 1.5, rng.uniform(0.8, 2.0))
        else:
            if rng.random() < 0.5:
                w.box("fence", 0, e + direction * 0.3, y + bw / 2, 0.0, 0.08, bw, rng.uniform(0.9, 2.0))
            w.box("vegetation", 0, e + direction * 1.3, y + bw / 2, 0.0, 1.2, bw - 0.5, rng.uniform(1.0, 3.0))
            for _ in range(int(rng.integers(1, 4))):
                place_tree(w, rng, e + direction * rng.uniform(3, 12), y + rng.uniform(0, bw),
                           scale=rng.uniform(0.8, 1.4))
        y += bw


def _build_side(w: World, style: Style, rng: np.random.Generator, side: int, half: float,
                x_min: float, x_max: float, crossings: List[Tuple[float, float]],
                crossing_at) -> None:
    """Kerb, parking lane, sidewalk, verge and frontage on one side (side = +-1);
    blocks stop 4 m before each cross street and resume 4 m after it."""
    sw = _u(rng, style.sidewalk_width)
    verge = _u(rng, style.verge_width)
    verge_kind = "other-ground" if rng.random() < style.verge_paved_prob else "terrain"
    x = x_min
    while x < x_max:
        inside = [(ca, cb) for ca, cb in crossings if ca - 4 <= x < cb + 4]
        if inside:
            # the corner of a crossing: sidewalk only, then go on after it
            xb = min(inside[0][1] + 4, x_max)
            w.ground(x, side * half, xb, side * (half + sw), "sidewalk")
            x = xb
            continue
        xb = min(x + _u(rng, style.block_length), x_max)
        ahead = [ca - 4 for ca, cb in crossings if ca - 4 > x]
        if ahead:
            xb = min(xb, min(ahead))
        xa = x
        x = xb
        if xb - xa < 6.0:
            w.ground(xa, side * half, xb, side * (half + sw), "sidewalk")
            continue
        e = half
        if rng.random() < style.parking_prob:
            w.ground(xa, side * e, xb, side * (e + 2.5), "parking")
            _parked_row(w, style, rng, xa, xb, side * (e + 1.25))
            e += 2.5
        elif rng.random() < 0.2:
            # cars parked on the road edge
            _parked_row(w, style, rng, xa, xb, side * (half - 1.1), sparse=True)
        w.ground(xa, side * e, xb, side * (e + sw), "sidewalk")
        e += sw
        if verge > 0.2:
            w.ground(xa, side * e, xb, side * (e + verge), verge_kind)
        # street trees and poles on the kerb side of the sidewalk / in the verge
        tree_y = side * (e + verge / 2) if verge > 1.2 else side * (e - sw + 0.8)
        if rng.random() < style.tree_prob:
            tx = xa + rng.uniform(1.0, 5.0)
            while tx < xb - 1.0:
                place_tree(w, rng, tx + rng.normal(0, 0.3), tree_y)
                tx += _u(rng, style.tree_spacing)
        r_green = rng.random()
        if verge > 0.8 and r_green < style.greenery * 0.5:
            # a planted strip: low shrubs over the whole verge
            w.box("vegetation", 0, (xa + xb) / 2, side * (e + verge / 2), 0.0, xb - xa - 1.0,
                  verge * 0.8, rng.uniform(0.4, 1.3))
        elif r_green < style.greenery:
            bx = xa + rng.uniform(0.5, 4.0)
            while bx < xb - 1.0:
                r = rng.uniform(0.5, 1.2)
                w.add(ELLIPSOID, K["vegetation"], 0, (bx, side * (e + verge * 0.6), r * 0.4),
                      (r, r * rng.uniform(0.7, 1.2), r))
                bx += rng.uniform(1.5, 5.0)
        e += verge
        _frontage(w, style, rng, side, e, xa, xb)
    # poles and signs along the whole side
    px = x_min + rng.uniform(0, 10)
    while px < x_max:
        if not crossing_at(px, px):
            sign = rng.random() < style.sign_prob
            place_pole(w, rng, px, side * (half + 0.6 + rng.uniform(0, 0.4)), sign, side)
        px += _u(rng, style.pole_spacing)


def _parked_row(w: World, style: Style, rng: np.random.Generator, xa: float, xb: float,
                y: float, sparse: bool = False) -> None:
    x = xa + rng.uniform(0.5, 3.0)
    while x < xb - 5.0:
        if sparse and rng.random() < 0.5:
            x += rng.uniform(5, 15)
            continue
        r = rng.random()
        kind = "car" if r < 0.97 else ("truck" if r < 0.985 else "other-vehicle")
        yaw = 0.0 if rng.random() < 0.5 else math.pi
        place_vehicle(w, rng, kind, x + 2.5, y, yaw + rng.normal(0, 0.03))
        x += 5.2 + _u(rng, style.parked_car_gap) + (5.0 if kind != "car" else 0.0)


def _frontage(w: World, style: Style, rng: np.random.Generator, side: int, e: float,
              xa: float, xb: float) -> None:
    """What stands behind the verge: buildings, gardens, parks, parking lots."""
    names = list(style.frontage_probs)
    probs = np.array([style.frontage_probs[n] for n in names])
    what = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    depth = 40.0
    if what == "building":
        setback = _u(rng, style.setback)
        if setback > 0.5:
            if style.name == "nuscenes":
                front = "sidewalk"
            else:
                front = ["terrain", "other-ground", "sidewalk"][int(rng.choice(3, p=[0.4, 0.2, 0.4]))]
            w.ground(xa, side * e, xb, side * (e + setback), front)
        x = xa + rng.uniform(0, 1.5)
        while x < xb - 4:
            bl = min(rng.uniform(10, 30), xb - x)
            bd = rng.uniform(10, 20)
            bh = _u(rng, style.building_height)
            w.box("building", 0, x + bl / 2, side * (e + setback + bd / 2), 0.0, bl, bd, bh)
            x += bl + rng.uniform(0, 1.5)
        if setback > 1.2 and rng.random() < style.greenery:
            if rng.random() < 0.5:
                _fence(w, rng, xa, xb, side * (e + 0.2))
            _hedge(w, rng, xa, xb, side * (e + setback / 2 + 0.2), rng.uniform(0.8, 2.0),
                   min(1.5, setback * 0.6))
    elif what == "garden":
        _fence(w, rng, xa, xb, side * (e + 0.2))
        if rng.random() < style.greenery:
            _hedge(w, rng, xa, xb, side * (e + 1.2), rng.uniform(1.0, 2.8))
        hx = (xa + xb) / 2
        hd = rng.uniform(8, 14)
        back = e + rng.uniform(6, 12)
        w.box("building", 0, hx, side * (back + hd / 2), 0.0, max(4.0, (xb - xa) * 0.6), hd,
              rng.uniform(5, 9))
        for _ in range(int(rng.integers(1, 4))):
            place_tree(w, rng, rng.uniform(xa + 1, xb - 1), side * (e + rng.uniform(3, 6)),
                       scale=rng.uniform(0.7, 1.2))
        for _ in range(int((xb - xa) * style.greenery * 0.4)):
            r = rng.uniform(0.6, 1.5)
            w.add(ELLIPSOID, K["vegetation"], 0,
                  (rng.uniform(xa, xb), side * (e + rng.uniform(2.5, 6)), r * 0.3), (r, r, r * 0.9))
        if rng.random() < 0.3:
            place_small(w, rng, "trash-bin", rng.uniform(xa, xb), side * (e - 0.5), 0.0)
    elif what == "park":
        if rng.random() < 0.4:
            _fence(w, rng, xa, xb, side * (e + 0.2))
        if rng.random() < style.greenery:
            _hedge(w, rng, xa, xb, side * (e + 1.2), rng.uniform(1.0, 3.0))
        n = int((xb - xa) * rng.uniform(0.15, 0.35))
        for _ in range(n):
            place_tree(w, rng, rng.uniform(xa, xb), side * (e + rng.uniform(2, depth)),
                       scale=rng.uniform(0.8, 1.5))
        for _ in range(3 * n):
            bx, by = rng.uniform(xa, xb), side * (e + rng.uniform(1, depth))
            r = rng.uniform(0.6, 1.8)
            w.add(ELLIPSOID, K["vegetation"], 0, (bx, by, r * 0.3), (r, r * rng.uniform(0.7, 1.3), r * 0.9))
        if rng.random() < 0.2:
            w.box("other-structure", 0, rng.uniform(xa, xb), side * (e + rng.uniform(5, 15)), 0.0,
                  rng.uniform(2, 4), rng.uniform(2, 4), rng.uniform(2, 3))
    else:  # parking lot
        lot_d = rng.uniform(15, 30)
        w.ground(xa, side * e, xb, side * (e + lot_d), "parking")
        for row_y in (e + 3.0, e + lot_d - 3.0):
            x = xa + 1.0
            while x < xb - 2.5:
                if rng.random() < 0.6:
                    place_vehicle(w, rng, "car", x + 1.2, side * row_y, math.pi / 2 + rng.normal(0, 0.05))
                x += 2.7
        if style.name == "kitti" and rng.random() < 0.5:
            _hedge(w, rng, xa, xb, side * (e + lot_d + 1.0), rng.uniform(1.5, 3.0))
        w.box("building", 0, (xa + xb) / 2, side * (e + lot_d + 9), 0.0, xb - xa, 14,
              _u(rng, style.building_height))


def _fence(w: World, rng: np.random.Generator, xa: float, xb: float, y: float) -> None:
    h = rng.uniform(0.9, 2.0)
    w.box("fence", 0, (xa + xb) / 2, y, 0.0, xb - xa, 0.08, h)


def _hedge(w: World, rng: np.random.Generator, xa: float, xb: float, y: float, h: float,
           depth: float = 1.5) -> None:
    w.box("vegetation", 0, (xa + xb) / 2, y, 0.0, xb - xa - 0.5, rng.uniform(0.6, 1.0) * depth, h)


def _populate_road(w: World, style: Style, rng: np.random.Generator, half: float, lanes: int,
                   lane_w: float, x_min: float, x_max: float, length: float, crossing_at) -> None:
    """Moving traffic, pedestrians and the rarer things of the style's mix."""
    span = x_max - x_min
    n_moving = rng.poisson(style.moving_per_100m * span / 100)
    for _ in range(n_moving):
        lane = int(rng.integers(0, lanes))
        s = 1 if rng.random() < 0.5 else -1
        y = s * lane_w * (lane + 0.5)
        x = rng.uniform(x_min, x_max)
        if abs(y - w.sensor_path[0][1]) < 1.0 and -6 < x < length + 6:
            continue  # not on top of the ego lane
        r = rng.random()
        kind = "moving-car" if r < 0.85 else ("moving-truck" if r < 0.93 else
                                               ("moving-bus" if style.name == "nuscenes" else "moving-other-vehicle"))
        place_vehicle(w, rng, kind, x, y, (0.0 if s < 0 else math.pi) + rng.normal(0, 0.02))
    n_ped = rng.poisson(style.pedestrians_per_100m * span / 100)
    for _ in range(n_ped):
        s = 1 if rng.random() < 0.5 else -1
        x = rng.uniform(x_min, x_max)
        y = s * (half + rng.uniform(0.5, 3.0))
        kind = "moving-person" if rng.random() < 0.5 else "person"
        place_person(w, kind, x, y, rng.uniform(1.55, 1.9))
    # each rare kind at least once near the driven path, then at its rate
    for kind, rate in style.object_mix.items():
        n = max(1, rng.poisson(rate * span / 100))
        for i in range(n):
            # the first one in sensor range but off the driven stretch, so that
            # every kind shows up without dominating short sequences
            if i == 0:
                x = -rng.uniform(15, 45) if rng.random() < 0.5 else length + rng.uniform(15, 45)
            else:
                x = rng.uniform(x_min, x_max)
            _place_rare(w, style, rng, kind, x, half, lanes, lane_w)


def _place_rare(w: World, style: Style, rng: np.random.Generator, kind: str, x: float,
                half: float, lanes: int, lane_w: float) -> None:
    s = 1 if rng.random() < 0.5 else -1
    on_road_y = s * lane_w * (lanes - 0.5)  # the kerb-side lane of either direction
    if kind in ("truck", "other-vehicle", "bus", "bendy-bus", "trailer", "ambulance", "police-car"):
        moving = rng.random() < 0.4 and kind in ("truck", "other-vehicle", "bus")
        name = ("moving-" + kind) if moving else kind
        y = s * (lane_w * (lanes - 0.5)) if moving else s * (half - 1.3)
        place_vehicle(w, rng, name, x, y, (0.0 if s < 0 else math.pi))
    elif kind in ("bicycle", "motorcycle"):
        y = s * (half + rng.uniform(0.5, 1.2))
        place_cycle(w, rng, kind, x, y, rng.uniform(0, math.pi))
    elif kind in ("bicyclist", "motorcyclist"):
        moving = rng.random() < 0.8
        y = s * (half - 0.8) if kind == "bicyclist" else on_road_y
        place_cycle(w, rng, ("moving-" + kind) if moving else kind, x, y, 0.0 if s < 0 else math.pi)
    elif kind in ("construction-worker", "police-officer", "child"):
        y = s * (half + rng.uniform(0.3, 3.0)) if kind != "construction-worker" else s * (half - 1.0)
        place_person(w, kind, x, y, 1.2 if kind == "child" else 1.8)
    elif kind in ("barrier", "traffic-cone"):
        y = s * (half - rng.uniform(0.3, 1.5))
        for k in range(int(rng.integers(1, 5))):
            place_small(w, rng, kind, x + k * (2.1 if kind == "barrier" else 1.5), y, 0.0)
    elif kind == "stone":  # kerb stones / bollards in a row at the road edge
        y = s * (half + rng.uniform(0.1, 0.5))
        for k in range(int(rng.integers(1, 6))):
            place_small(w, rng, kind, x + k * rng.uniform(1.2, 2.5), y, rng.normal(0, 0.2))
    elif kind == "person-group":  # on the sidewalk or the road edge
        place_group(w, rng, x, s * (half + rng.uniform(-0.8, 3.5)), int(rng.integers(2, 5)))
    elif kind == "bicycle-row":  # parked side by side, across the sidewalk
        y = s * (half + rng.uniform(1.0, 3.0))
        for k in range(int(rng.integers(3, 11))):
            place_cycle(w, rng, "bicycle", x + k * rng.uniform(0.55, 0.8), y, math.pi / 2 + rng.normal(0, 0.1))
    else:
        y = s * (half + rng.uniform(0.3, 2.5))
        place_small(w, rng, kind, x, y, rng.uniform(0, math.pi))
