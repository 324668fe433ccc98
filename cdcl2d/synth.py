"""Procedural street scenes written in the Cityscapes, BDD100K, CamVid and
KITTI on-disk layouts, so the real readers load them.

A scene is drawn once as Cityscapes *label ids* (sky, road, sidewalk,
buildings with windows, walls, fences, vegetation, terrain, poles with signs
and traffic lights, cars, trucks, buses, people, cyclists) together with its
colour image, in perspective towards a vanishing point, far objects first.
Each dataset has its own style and camera:

* ``cityscapes``: overcast, muted colours, 2:1 frames, ego-vehicle hood;
* ``bdd100k``: 16:9 dash-cam, day / dusk / night (dark, lit windows,
  headlights) and rain (streaks, low contrast, blur), JPEG;
* ``camvid``: 4:3 camera, warm sunny light, saturated colours, lower horizon;
* ``kitti``: wide 3.3:1 frames, bright daylight (the unseen domain).

Every labelled shape is a polygon with integer vertices inside the image, kept
back to front, and the label image is those polygons drawn in that order (as
cityscapesscripts' ``json2labelImg`` draws ``*_gtFine_polygons.json``). Objects
of instance classes (person, rider, car, truck, bus, bicycle ...) get an
instance id each.

Labels are converted per dataset: Cityscapes/KITTI keep label ids, BDD100K
gets train ids, CamVid gets its 11 classes (void = 11). A Cityscapes image gets
the real gtFine file set: ``_labelIds.png``, ``_instanceIds.png`` (16 bit,
``labelId * 1000 + k`` on the k-th object of an instance class, the label id
elsewhere), ``_color.png`` (RGBA, the official colours) and
``_polygons.json``. All randomness comes from one ``numpy.random.Generator``
per image, so ``seed`` fixes the output.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.errors import OptionError

from .datasets.labels import CITYSCAPES_LABELS, cityscapes_id_to_train_lut

Point = Tuple[int, int]

logger = logging.getLogger(__name__)

# Cityscapes label ids used by the scene drawer.
EGO, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 1, 7, 8, 11, 12, 13, 17
LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 32, 33

DATASETS = ("cityscapes", "bdd100k", "camvid", "kitti")

# Label ids whose objects carry instance ids (``hasInstances`` in cityscapesscripts'
# labels.py): person, rider, car, truck, bus, caravan, trailer, train, motorcycle, bicycle.
INSTANCE_IDS = frozenset(range(24, 34))

# Cityscapes label id -> CamVid 11-class id (11 = void).
_CAMVID_FROM_ID = {ROAD: 3, SIDEWALK: 4, BUILDING: 1, WALL: 1, FENCE: 7, POLE: 2, LIGHT: 6, SIGN: 6,
                   VEGETATION: 5, TERRAIN: 5, SKY: 0, PERSON: 9, RIDER: 10, CAR: 8, TRUCK: 8, BUS: 8,
                   MOTORCYCLE: 10, BICYCLE: 10}


@dataclass
class Style:
    """Camera and look of one synthetic dataset."""

    size: Tuple[int, int]  # (width, height)
    horizon: Tuple[float, float]  # horizon row as a fraction of the height
    light: float  # global brightness multiplier
    saturation: float
    tint: Tuple[float, float, float]
    sky_top: Tuple[int, int, int]
    sky_bottom: Tuple[int, int, int]
    noise: float
    ego_hood: bool = False


STYLES: Dict[str, Style] = {
    "cityscapes": Style((256, 128), (0.40, 0.48), 0.85, 0.55, (0.97, 1.0, 1.03),
                        (170, 178, 186), (205, 208, 212), 5.0, ego_hood=True),
    "bdd100k": Style((228, 128), (0.42, 0.52), 1.0, 0.9, (1.0, 1.0, 1.0),
                     (90, 140, 215), (180, 205, 235), 6.0),
    "camvid": Style((160, 120), (0.48, 0.58), 1.1, 1.25, (1.08, 1.0, 0.88),
                    (120, 165, 225), (215, 220, 210), 4.0),
    "kitti": Style((320, 96), (0.36, 0.44), 1.15, 1.0, (1.02, 1.0, 0.98),
                   (100, 150, 220), (200, 215, 235), 4.0),
}

_BASE_COLOURS = {
    ROAD: (90, 88, 92), SIDEWALK: (150, 140, 135), TERRAIN: (120, 140, 70), VEGETATION: (60, 105, 40),
    POLE: (110, 110, 115), SIGN: (215, 200, 30), LIGHT: (40, 40, 40), FENCE: (150, 130, 110),
    WALL: (160, 150, 140), PERSON: (120, 60, 60), RIDER: (60, 60, 130), BICYCLE: (30, 30, 30),
    MOTORCYCLE: (20, 20, 60), EGO: (40, 42, 48),
}


class Canvas:
    """A colour image, a label-id image and an object-index image drawn with the
    same polygons.

    Shapes become polygons with integer vertices, clipped to the image, so that
    ``polygons`` (label id, vertices), drawn back to front, give the label image
    exactly. ``obj`` is the object a shape belongs to (0: none): the parts of one
    car share it, and the instance image is derived from it.
    """

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.rgb = Image.new("RGB", (width, height))
        self.lab = Image.new("L", (width, height))
        self.obj = Image.new("I", (width, height))
        self.polygons: List[Tuple[int, List[Point]]] = []
        self._drgb = ImageDraw.Draw(self.rgb)
        self._dlab = ImageDraw.Draw(self.lab)
        self._dobj = ImageDraw.Draw(self.obj)
        self._objects = 0

    def new_object(self) -> int:
        """A fresh object index for the parts of one object."""
        self._objects += 1
        return self._objects

    def polygon(self, pts, label: int, colour, obj: int = 0) -> None:
        poly = _clip_polygon([(float(x), float(y)) for x, y in pts], self.w - 1, self.h - 1)
        if not poly:
            return  # entirely outside the image
        self._drgb.polygon(poly, fill=tuple(int(c) for c in colour))
        self._dlab.polygon(poly, fill=label)
        self._dobj.polygon(poly, fill=obj)
        self.polygons.append((label, poly))

    def rect(self, x0, y0, x1, y1, label: int, colour, obj: int = 0) -> None:
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label, colour, obj)

    def ellipse(self, x0, y0, x1, y1, label: int, colour, obj: int = 0) -> None:
        cx, cy = (float(x0) + float(x1)) / 2, (float(y0) + float(y1)) / 2
        a, b = abs(float(x1) - float(x0)) / 2, abs(float(y1) - float(y0)) / 2
        n = int(min(48, max(8, round(math.pi * (a + b) / 2))))  # a vertex every ~2 pixels
        t = 2 * math.pi * np.arange(n) / n
        self.polygon(list(zip(cx + a * np.cos(t), cy + b * np.sin(t))), label, colour, obj)

    def paint(self, pts, colour) -> None:
        """Colour only (texture details such as windows and lane marks)."""
        self._drgb.polygon([(float(x), float(y)) for x, y in pts], fill=tuple(int(c) for c in colour))

    def instances(self) -> np.ndarray:
        """Cityscapes instance ids (H, W) int32: ``labelId * 1000 + k`` on the k-th
        visible object of an instance class (numbered per class, in drawing
        order), the label id elsewhere."""
        labels = np.asarray(self.lab, dtype=np.int32)
        objects = np.asarray(self.obj, dtype=np.int32)
        out = labels.copy()
        count: Dict[int, int] = {}
        for k in np.unique(objects[objects > 0]):  # ascending = drawing order
            mask = (objects == k) & np.isin(labels, list(INSTANCE_IDS))
            for label in np.unique(labels[mask]).tolist():  # one label per object
                index = count.get(label, 0)
                out[mask & (labels == label)] = label * 1000 + index
                count[label] = index + 1
        return out


def _clip_polygon(pts: Sequence[Tuple[float, float]], xmax: float, ymax: float) -> List[Point]:
    """Sutherland-Hodgman clip to [0, xmax] x [0, ymax], vertices made integers (as
    in the real polygon files) by truncation, which is what PIL does to float
    vertices. Empty when nothing is inside."""
    def clip(poly, inside, cross):
        out = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
        return out

    def at_x(x):
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    poly = list(pts)
    for inside, cross in ((lambda p: p[0] >= 0, at_x(0.0)), (lambda p: p[0] <= xmax, at_x(xmax)),
                          (lambda p: p[1] >= 0, at_y(0.0)), (lambda p: p[1] <= ymax, at_y(ymax))):
        if not poly:
            break
        poly = clip(poly, inside, cross)
    if len(poly) < 3:
        return []
    return [(int(x), int(y)) for x, y in poly]  # x, y >= 0 here: int() is floor


def _vary(rng: np.random.Generator, colour, amount: float = 18.0) -> Tuple[int, int, int]:
    c = np.asarray(colour, dtype=np.float64) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


@dataclass
class Scene:
    """One drawn street scene."""

    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 Cityscapes label ids
    instances: np.ndarray  # (H, W) int32 Cityscapes instance ids (see Canvas.instances)
    polygons: List[Tuple[int, List[Point]]]  # (label id, vertices), back to front


def generate_scene(rng: np.random.Generator, style: Style, weather: str = "day") -> Tuple[np.ndarray, np.ndarray]:
    """One street scene: colour image (H, W, 3) uint8 and Cityscapes label ids (H, W) uint8.

    ``weather`` is ``day``, ``dusk``, ``night`` or ``rain``.
    """
    scene = draw_scene(rng, style, weather)
    return scene.rgb, scene.labels


def draw_scene(rng: np.random.Generator, style: Style, weather: str = "day") -> Scene:
    """One street scene with its instance ids and polygons (see :func:`generate_scene`)."""
    w, h = style.size
    cv = Canvas(w, h)
    hz = h * rng.uniform(*style.horizon)  # horizon row
    vx = w * rng.uniform(0.42, 0.58)  # vanishing point column

    # Sky: a vertical gradient (label first, colour painted afterwards).
    cv.rect(0, 0, w, hz + 1, SKY, style.sky_top)

    # Ground: everything below the horizon starts as sidewalk.
    cv.rect(0, hz, w, h, SIDEWALK, _vary(rng, _BASE_COLOURS[SIDEWALK], 10))

    def depth_left(x: float) -> float:  # 1 at the left border, 0 at the vanishing point
        return max(0.0, (vx - x) / vx)

    def depth_right(x: float) -> float:
        return max(0.0, (x - vx) / (w - vx))

    ground_drop = (h - hz) * rng.uniform(0.75, 0.95)  # building base at the image border

    # Buildings (or vegetation / terrain) along both sides, facades converging
    # to the vanishing point.
    for side in ("left", "right"):
        depth = depth_left if side == "left" else depth_right
        edges = np.sort(rng.uniform(0, 1, rng.integers(2, 5)))
        stops = [0.0] + list(edges) + [0.93]
        for a, b in zip(stops[:-1], stops[1:]):
            if b - a < 0.03:
                continue
            if side == "left":
                x0, x1 = a * vx, b * vx
            else:
                x0, x1 = w - a * (w - vx), w - b * (w - vx)
            kind = rng.choice(["building", "building", "building", "vegetation", "wall"])
            height = h * rng.uniform(0.5, 1.6)
            d0, d1 = depth(x0), depth(x1)
            g0, g1 = hz + d0 * ground_drop, hz + d1 * ground_drop
            r0, r1 = hz - d0 * height, hz - d1 * height
            if kind == "building":
                colour = _vary(rng, rng.choice([(150, 120, 100), (170, 160, 150), (120, 110, 105),
                                                (190, 175, 140), (110, 100, 120)]), 15)
                cv.polygon([(x0, g0), (x0, r0), (x1, r1), (x1, g1)], BUILDING, colour)
                # Windows: rows of darker quads on the facade (still "building").
                win = tuple(int(c * 0.45) for c in colour)
                for fy in np.arange(0.15, 0.9, rng.uniform(0.15, 0.25)):
                    for fx in np.arange(0.1, 0.9, rng.uniform(0.15, 0.3)):
                        fx2, fy2 = fx + 0.07, fy + 0.08
                        xa, xb = x0 + (x1 - x0) * fx, x0 + (x1 - x0) * fx2
                        ya0 = r0 + (g0 - r0) * fy
                        ya1 = r1 + (g1 - r1) * fy
                        yb0 = r0 + (g0 - r0) * fy2
                        yb1 = r1 + (g1 - r1) * fy2
                        t0, t1 = fx, fx2
                        cv.paint([(xa, ya0 + (ya1 - ya0) * t0), (xb, ya0 + (ya1 - ya0) * t1),
                                  (xb, yb0 + (yb1 - yb0) * t1), (xa, yb0 + (yb1 - yb0) * t0)], win)
            elif kind == "vegetation":
                top0, top1 = hz - d0 * height * 0.5, hz - d1 * height * 0.5
                cv.polygon([(x0, g0), (x0, top0), (x1, top1), (x1, g1)], VEGETATION,
                           _vary(rng, _BASE_COLOURS[VEGETATION]))
                for _ in range(int(rng.integers(3, 8))):  # bumpy crown
                    t = rng.uniform(0, 1)
                    cx, cy = x0 + (x1 - x0) * t, top0 + (top1 - top0) * t
                    rad = max(2.0, d0 * h * rng.uniform(0.05, 0.15))
                    cv.ellipse(cx - rad, cy - rad, cx + rad, cy + rad, VEGETATION,
                               _vary(rng, _BASE_COLOURS[VEGETATION]))
            else:
                top0, top1 = hz - d0 * height * 0.12, hz - d1 * height * 0.12
                label = WALL if rng.random() < 0.6 else FENCE
                cv.polygon([(x0, g0), (x0, top0), (x1, top1), (x1, g1)], label, _vary(rng, _BASE_COLOURS[label]))
                # What stands behind the wall/fence.
                back0, back1 = hz - d0 * height * 0.7, hz - d1 * height * 0.7
                cv.polygon([(x0, top0), (x0, back0), (x1, back1), (x1, top1)], VEGETATION,
                           _vary(rng, _BASE_COLOURS[VEGETATION]))

    # Terrain strips between sidewalk and buildings, sometimes.
    road_half_bottom = w * rng.uniform(0.28, 0.45)
    road_half_top = w * rng.uniform(0.005, 0.02)
    walk = w * rng.uniform(0.08, 0.2)
    if rng.random() < 0.5:
        cv.polygon([(vx - road_half_top * 3, hz), (vx - road_half_bottom - walk * 2.2, h),
                    (vx - road_half_bottom - walk * 1.1, h)], TERRAIN, _vary(rng, _BASE_COLOURS[TERRAIN]))
    if rng.random() < 0.5:
        cv.polygon([(vx + road_half_top * 3, hz), (vx + road_half_bottom + walk * 2.2, h),
                    (vx + road_half_bottom + walk * 1.1, h)], TERRAIN, _vary(rng, _BASE_COLOURS[TERRAIN]))

    # Road with lane markings (marks stay "road").
    road_colour = _vary(rng, _BASE_COLOURS[ROAD], 10)
    cv.polygon([(vx - road_half_top, hz), (vx + road_half_top, hz), (vx + road_half_bottom, h),
                (vx - road_half_bottom, h)], ROAD, road_colour)
    mark = (215, 215, 205) if rng.random() < 0.8 else (215, 190, 60)
    n_dash = 8
    for i in range(n_dash):
        t0, t1 = (i + 0.2) / n_dash, (i + 0.6) / n_dash
        t0, t1 = t0 ** 1.8, t1 ** 1.8  # dashes grow towards the camera
        y0, y1 = hz + (h - hz) * t0, hz + (h - hz) * t1
        cv.paint([(vx - 0.4 - t0 * w * 0.006, y0), (vx + 0.4 + t0 * w * 0.006, y0),
                  (vx + 0.4 + t1 * w * 0.006, y1), (vx - 0.4 - t1 * w * 0.006, y1)], mark)

    # Objects, far (small depth) to near.
    objects: List[Tuple[float, str, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        objects.append((rng.uniform(0.1, 0.9), "vehicle", rng.uniform(-0.8, 0.8)))
    for _ in range(int(rng.integers(0, 4))):
        objects.append((rng.uniform(0.15, 0.9), "person", rng.choice([-1.0, 1.0])))
    for _ in range(int(rng.integers(1, 4))):
        objects.append((rng.uniform(0.15, 0.95), "pole", rng.choice([-1.0, 1.0])))
    if rng.random() < 0.4:
        objects.append((rng.uniform(0.2, 0.8), "cyclist", rng.uniform(-0.9, 0.9)))
    if rng.random() < 0.4:
        objects.append((rng.uniform(0.2, 0.9), "tree", rng.choice([-1.0, 1.0])))
    objects.sort(key=lambda o: o[0])

    for s, kind, lateral in objects:
        y = hz + (h - hz) * s  # ground contact row
        half_road = road_half_top + (road_half_bottom - road_half_top) * s
        scale = s * h  # pixels per "unit" at this depth
        if kind == "vehicle":
            cx = vx + lateral * half_road * 0.8
            sub = rng.choice(["car", "car", "car", "truck", "bus"])
            bw = scale * {"car": 0.55, "truck": 0.7, "bus": 0.8}[sub]
            bh = scale * {"car": 0.3, "truck": 0.55, "bus": 0.6}[sub]
            label = {"car": CAR, "truck": TRUCK, "bus": BUS}[sub]
            obj = cv.new_object()
            body = _vary(rng, rng.choice([(160, 20, 20), (30, 50, 140), (200, 200, 200), (30, 30, 30),
                                          (120, 120, 125), (210, 180, 40)]), 20)
            cv.rect(cx - bw / 2, y - bh, cx + bw / 2, y - bh * 0.15, label, body, obj)
            if sub == "car":  # cabin with darker glass
                cv.polygon([(cx - bw * 0.35, y - bh), (cx - bw * 0.25, y - bh * 1.55),
                            (cx + bw * 0.25, y - bh * 1.55), (cx + bw * 0.35, y - bh)], label, body, obj)
                cv.paint([(cx - bw * 0.3, y - bh * 1.02), (cx - bw * 0.22, y - bh * 1.45),
                          (cx + bw * 0.22, y - bh * 1.45), (cx + bw * 0.3, y - bh * 1.02)], (40, 50, 60))
            else:
                cv.paint([(cx - bw * 0.45, y - bh * 0.9), (cx + bw * 0.45, y - bh * 0.9),
                          (cx + bw * 0.45, y - bh * 0.65), (cx - bw * 0.45, y - bh * 0.65)], (40, 50, 60))
            for wx in (cx - bw * 0.32, cx + bw * 0.32):  # wheels belong to the vehicle
                r = bh * 0.2
                cv.ellipse(wx - r, y - 2 * r, wx + r, y, label, (20, 20, 20), obj)
            for lx in (cx - bw * 0.4, cx + bw * 0.4):  # lights: tail/head
                cv.paint([(lx - bw * 0.05, y - bh * 0.55), (lx + bw * 0.05, y - bh * 0.55),
                          (lx + bw * 0.05, y - bh * 0.45), (lx - bw * 0.05, y - bh * 0.45)],
                         (255, 240, 200) if weather == "night" else (200, 40, 30))
        elif kind == "person":
            cx = vx + lateral * (half_road + (h - hz) * s * rng.uniform(0.15, 0.4))
            ph = scale * 0.75
            shirt = _vary(rng, _BASE_COLOURS[PERSON], 50)
            obj = cv.new_object()
            cv.rect(cx - ph * 0.09, y - ph * 0.45, cx - ph * 0.01, y, PERSON, (40, 40, 60), obj)  # legs
            cv.rect(cx + ph * 0.01, y - ph * 0.45, cx + ph * 0.09, y, PERSON, (40, 40, 60), obj)
            cv.rect(cx - ph * 0.12, y - ph * 0.82, cx + ph * 0.12, y - ph * 0.43, PERSON, shirt, obj)
            cv.ellipse(cx - ph * 0.08, y - ph, cx + ph * 0.08, y - ph * 0.8, PERSON, (200, 160, 130), obj)
        elif kind == "cyclist":
            cx = vx + lateral * half_road
            ph = scale * 0.75
            r = ph * 0.2
            bike, rider = cv.new_object(), cv.new_object()  # two instances of two classes
            for wx in (cx - ph * 0.25, cx + ph * 0.25):
                cv.ellipse(wx - r, y - 2 * r, wx + r, y, BICYCLE, _BASE_COLOURS[BICYCLE], bike)
            cv.rect(cx - ph * 0.25, y - r * 1.2, cx + ph * 0.25, y - r * 0.9, BICYCLE, (150, 20, 20), bike)
            cv.rect(cx - ph * 0.1, y - ph * 0.9, cx + ph * 0.1, y - r * 1.2, RIDER,
                    _vary(rng, _BASE_COLOURS[RIDER], 40), rider)
            cv.ellipse(cx - ph * 0.08, y - ph * 1.08, cx + ph * 0.08, y - ph * 0.9, RIDER, (200, 160, 130), rider)
        elif kind == "pole":
            cx = vx + lateral * (half_road + (h - hz) * s * 0.12)
            ph = scale * 1.6
            pw = max(1.0, scale * 0.03)
            cv.rect(cx - pw, y - ph, cx + pw, y, POLE, _BASE_COLOURS[POLE])
            if rng.random() < 0.5:
                sz = scale * 0.15
                shape = rng.choice(["circle", "square", "triangle"])
                colour = _vary(rng, rng.choice([(200, 30, 30), (30, 70, 190), (215, 200, 30)]), 10)
                top = y - ph
                if shape == "circle":
                    cv.ellipse(cx - sz, top, cx + sz, top + 2 * sz, SIGN, colour)
                elif shape == "square":
                    cv.rect(cx - sz, top, cx + sz, top + 2 * sz, SIGN, colour)
                else:
                    cv.polygon([(cx - sz, top), (cx + sz, top), (cx, top + 2 * sz)], SIGN, colour)
            else:
                sz = scale * 0.08
                top = y - ph
                cv.rect(cx - sz, top, cx + sz, top + 5 * sz, LIGHT, _BASE_COLOURS[LIGHT])
                lamp = [(220, 30, 30), (230, 180, 30), (40, 200, 60)][int(rng.integers(0, 3))]
                k = int(rng.integers(0, 3))
                cv.paint([(cx - sz * 0.6, top + (0.4 + 1.5 * k) * sz), (cx + sz * 0.6, top + (0.4 + 1.5 * k) * sz),
                          (cx + sz * 0.6, top + (1.5 + 1.5 * k) * sz), (cx - sz * 0.6, top + (1.5 + 1.5 * k) * sz)],
                         lamp)
        elif kind == "tree":
            cx = vx + lateral * (half_road + (h - hz) * s * 0.2)
            th = scale * 1.3
            tw = max(1.0, scale * 0.05)
            cv.rect(cx - tw, y - th * 0.6, cx + tw, y, VEGETATION, (80, 60, 40))
            rad = th * 0.3
            cv.ellipse(cx - rad, y - th - rad * 0.3, cx + rad, y - th * 0.45, VEGETATION,
                       _vary(rng, _BASE_COLOURS[VEGETATION]))

    if style.ego_hood:  # Cityscapes frames show the ego vehicle's bonnet
        top = h * rng.uniform(0.9, 0.95)
        cv.polygon([(0, h), (w * 0.1, top), (w * 0.9, top), (w, h)], EGO, _BASE_COLOURS[EGO])

    rgb = np.asarray(cv.rgb, dtype=np.float32)
    labels = np.asarray(cv.lab, dtype=np.uint8).copy()
    rgb = _shade(rng, rgb, labels, style, weather, hz)
    return Scene(rgb, labels, cv.instances(), cv.polygons)


def _shade(rng: np.random.Generator, rgb: np.ndarray, labels: np.ndarray, style: Style,
           weather: str, hz: float) -> np.ndarray:
    """Sky gradient, lighting, tint, saturation, texture noise and weather."""
    h, w = labels.shape
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sky_top, sky_bottom = np.asarray(style.sky_top, np.float32), np.asarray(style.sky_bottom, np.float32)
    if weather == "night":
        sky_top, sky_bottom = np.array([8, 10, 22], np.float32), np.array([30, 30, 45], np.float32)
    elif weather == "dusk":
        sky_top, sky_bottom = np.array([70, 80, 140], np.float32), np.array([235, 150, 90], np.float32)
    elif weather == "rain":
        sky_top, sky_bottom = np.array([120, 122, 128], np.float32), np.array([160, 162, 165], np.float32)
    sky_rows = np.clip(rows / max(hz / h, 1e-3), 0, 1)
    sky = sky_top + (sky_bottom - sky_top) * sky_rows
    is_sky = (labels == SKY)[..., None]
    rgb = np.where(is_sky, np.broadcast_to(sky, rgb.shape), rgb)

    # Texture: fine noise everywhere, stronger on vegetation and road.
    noise = rng.normal(0, style.noise, rgb.shape).astype(np.float32)
    rough = np.isin(labels, [VEGETATION, TERRAIN, ROAD])[..., None]
    rgb = rgb + noise * np.where(rough, 2.5, 1.0)

    # Light: brighter towards the horizon, darker at the bottom; tint and saturation.
    light = style.light * (1.0 - 0.15 * np.clip(rows - hz / h, 0, 1))
    if weather == "night":
        light = light * 0.28
    elif weather == "dusk":
        light = light * 0.7
    elif weather == "rain":
        light = light * 0.8
    rgb = np.where(is_sky, rgb, rgb * light)
    rgb = rgb * np.asarray(style.tint, np.float32)
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + (rgb - grey) * style.saturation

    if weather == "night":  # lit windows and street lamps
        lit = (labels == BUILDING) & (rng.random(labels.shape) < 0.03)
        rgb[lit] = np.array([230, 200, 120], np.float32)
    if weather == "rain":
        rgb = 0.75 * rgb + 0.25 * rgb.mean()  # haze: lower contrast
        for _ in range(int(w * h / 150)):  # streaks
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            length = int(rng.integers(3, 8))
            rgb[y:y + length, x] = rgb[y:y + length, x] * 0.6 + 0.4 * 200.0
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if weather == "rain":
        img = img.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img)


# -- writers ---------------------------------------------------------------------

def _save_png(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _cityscapes_colours() -> np.ndarray:
    """Label id -> RGBA colour (256, 4), the official colours, opaque."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        lut[label.id] = (*label.color, 255)
    return lut


def write_gtfine(scene: Scene, prefix: str) -> None:
    """The gtFine files of one image: ``{prefix}_gtFine_labelIds.png`` (uint8),
    ``_instanceIds.png`` (16 bit), ``_color.png`` (RGBA) and ``_polygons.json``
    (``imgHeight``, ``imgWidth``, ``objects``: ``[{label, polygon}]`` back to front)."""
    h, w = scene.labels.shape
    names = {label.id: label.name for label in CITYSCAPES_LABELS}
    _save_png(scene.labels, f"{prefix}_gtFine_labelIds.png")
    _save_png(scene.instances.astype(np.uint16), f"{prefix}_gtFine_instanceIds.png")
    _save_png(_cityscapes_colours()[scene.labels], f"{prefix}_gtFine_color.png")
    objects = [{"label": names[label], "polygon": [[x, y] for x, y in poly]} for label, poly in scene.polygons]
    with open(f"{prefix}_gtFine_polygons.json", "w") as f:
        json.dump({"imgHeight": h, "imgWidth": w, "objects": objects}, f, indent=4)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> train ids (255 ignore)."""
    return cityscapes_id_to_train_lut()[label_ids].astype(np.uint8)


def to_camvid(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> CamVid 11-class ids (11 void)."""
    lut = np.full(256, 11, dtype=np.uint8)
    for k, v in _CAMVID_FROM_ID.items():
        lut[k] = v
    return lut[label_ids]


def _weather(kind: str, rng: np.random.Generator) -> str:
    """BDD100K mixes day, dusk, night and rain; the others are daytime."""
    if kind == "bdd100k":
        return str(rng.choice(["day", "day", "dusk", "night", "rain"]))
    return "day"


def write_dataset(kind: str, out_dir: str, num_train: int = 40, num_val: int = 10, seed: int = 0,
                  size: Optional[Tuple[int, int]] = None) -> str:
    """Write one synthetic dataset in ``kind``'s layout under ``out_dir/kind``;
    returns that root. ``size = (width, height)`` overrides the style's."""
    if kind not in STYLES:
        raise OptionError(f"unknown synthetic dataset {kind!r}; valid: {', '.join(DATASETS)}")
    style = STYLES[kind]
    if size is not None:
        style = Style(**{**style.__dict__, "size": (int(size[0]), int(size[1]))})
    root = os.path.join(out_dir, kind)
    base = DATASETS.index(kind) * 1_000_003 + seed * 7919
    splits = [("train", num_train), ("val", num_val)]
    if kind == "kitti":  # KITTI semantic has only a labelled 'training' part
        splits = [("training", num_train + num_val)]
    for split, n in splits:
        for i in range(n):
            rng = np.random.default_rng([base, {"train": 0, "val": 1, "training": 2}[split], i])
            scene = draw_scene(rng, style, _weather(kind, rng))
            rgb, ids = scene.rgb, scene.labels
            if kind == "cityscapes":
                city = {"train": ["aachen", "bremen"], "val": ["frankfurt"]}[split][i % (2 if split == "train" else 1)]
                stem = f"{city}_{i // 2 if split == 'train' else i:06d}_000019"
                _save_png(rgb, os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"))
                write_gtfine(scene, os.path.join(root, "gtFine", split, city, stem))
            elif kind == "bdd100k":
                stem = f"{int(rng.integers(0, 2**32)):08x}-{base % 65536:04x}{i:04x}"
                path = os.path.join(root, "images", "10k", split, f"{stem}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(rgb).save(path, quality=92)
                _save_png(to_train_ids(ids), os.path.join(root, "labels", "sem_seg", "masks", split, f"{stem}.png"))
            elif kind == "camvid":
                prefix = {"train": "0001TP", "val": "0016E5"}[split]
                name = f"{prefix}_{i * 30:06d}.png"
                _save_png(rgb, os.path.join(root, split, name))
                _save_png(to_camvid(ids), os.path.join(root, split + "annot", name))
            else:  # kitti
                name = f"{i:06d}_10.png"
                _save_png(rgb, os.path.join(root, "training", "image_2", name))
                _save_png(ids, os.path.join(root, "training", "semantic", name))
    return root


def generate(out_dir: str, datasets: Sequence[str] = DATASETS, num_train: int = 40, num_val: int = 10,
             seed: int = 0) -> Dict[str, str]:
    """Write every requested dataset; returns ``{kind: root}``."""
    roots = {}
    for kind in datasets:
        roots[kind] = write_dataset(kind, out_dir, num_train, num_val, seed)
        logger.info("wrote synthetic %s to %s", kind, roots[kind])
    return roots


# -- ``cdcl synth images`` ----------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cdcl synth images``."""
    parser.add_argument("--out", default=os.path.join("data", "synth", "images"),
                        help="output folder (one sub-folder per dataset)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated subset of {', '.join(DATASETS)}")
    parser.add_argument("--num-train", type=int, default=40, help="training images per dataset")
    parser.add_argument("--num-val", type=int, default=10, help="validation images per dataset")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cdcl synth images``."""
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    bad = [k for k in kinds if k not in DATASETS]
    if bad:
        raise OptionError(f"unknown dataset(s) {bad}; valid: {', '.join(DATASETS)}")
    roots = generate(args.out, kinds, args.num_train, args.num_val, args.seed)
    for kind, root in roots.items():
        print(f"{kind:11s} -> {root}")
    return 0


# Every Cityscapes label id the drawer may emit must exist in the table.
assert {l.id for l in CITYSCAPES_LABELS} >= set(_CAMVID_FROM_ID) | {EGO} | INSTANCE_IDS
