"""Legends (class-name -> colour swatches), captions, scale bars and
direction arrows drawn with Pillow."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SWATCH = 14  # swatch side, pixels
ROW = 20  # row pitch, pixels
PAD = 8
TEXT_COLOR = (235, 235, 235)
DIM_TEXT_COLOR = (110, 110, 110)
PANEL_COLOR = (24, 24, 24)


def get_font(size: int = 13) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: no size argument
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def legend_entries(class_ids: Sequence[int], class_names: Sequence[str],
                   palette: np.ndarray) -> List[Tuple[str, Tuple[int, int, int]]]:
    """(name, rgb) for each train id in ``class_ids``."""
    pal = np.asarray(palette, dtype=np.uint8)
    out = []
    for i in class_ids:
        if not 0 <= int(i) < len(pal):
            raise ValueError(f"class id {i} outside the palette (0..{len(pal) - 1})")
        out.append((str(class_names[int(i)]), tuple(int(c) for c in pal[int(i)])))
    return out


def class_legend_entries(class_names: Sequence[str], palette: np.ndarray,
                         present: Sequence[int]) -> List[Tuple[str, Tuple[int, int, int], bool]]:
    """(name, rgb, present) for every class, in train-id order: the legend of
    every class with the ones in ``present`` marked (:func:`draw_legend`)."""
    here = {int(i) for i in present}
    return [(name, rgb, i in here)
            for i, (name, rgb) in enumerate(legend_entries(range(len(class_names)), class_names, palette))]


def draw_legend(entries: Sequence[Tuple], height: int,
                title: Optional[str] = None, font_size: int = 13) -> np.ndarray:
    """A legend panel ``(height, W, 3) uint8``: one swatch and name per entry,
    in as many columns as ``height`` needs. An entry is ``(name, rgb)`` or
    ``(name, rgb, present)``: a class not present is drawn dim (swatch at a
    third of its colour, grey name), a present one bright and marked ``*``."""
    font = get_font(font_size)
    rows = [(e[0], e[1], True if len(e) < 3 else bool(e[2])) for e in entries]
    marked = any(len(e) >= 3 for e in entries)
    labels = [("* " if here else "  ") + name if marked else name for name, _, here in rows]
    rows_per_col = max(1, (height - 2 * PAD - (ROW if title else 0)) // ROW)
    ncols = max(1, -(-len(rows) // rows_per_col))
    text_w = max([_text_width(font, t) for t in labels] + [_text_width(font, title or "")])
    col_w = SWATCH + 6 + text_w + PAD
    width = max(PAD + ncols * col_w, 2 * PAD + 40)
    panel = Image.new("RGB", (width, int(height)), PANEL_COLOR)
    draw = ImageDraw.Draw(panel)
    y0 = PAD
    if title:
        draw.text((PAD, y0), title, fill=TEXT_COLOR, font=font)
        y0 += ROW
    for k, ((name, rgb, here), text) in enumerate(zip(rows, labels)):
        c, r = divmod(k, rows_per_col)
        x, y = PAD + c * col_w, y0 + r * ROW
        fill = tuple(int(v) for v in rgb) if here else tuple(int(v) // 3 for v in rgb)
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=fill,
                       outline=(200, 200, 200) if here else DIM_TEXT_COLOR)
        draw.text((x + SWATCH + 6, y), text, fill=TEXT_COLOR if here else DIM_TEXT_COLOR, font=font)
    return np.asarray(panel, dtype=np.uint8)


def add_legend(image: np.ndarray, entries: Sequence[Tuple[str, Sequence[int]]],
               title: Optional[str] = None) -> np.ndarray:
    """``image`` with a legend panel appended on its right."""
    img = np.asarray(image, dtype=np.uint8)
    if not entries and not title:
        return img
    panel = draw_legend(entries, img.shape[0], title=title)
    return np.concatenate([img, panel], axis=1)


def draw_caption(image: np.ndarray, text: str, xy: Tuple[int, int] = (6, 4),
                 font_size: int = 14) -> np.ndarray:
    """A copy of ``image`` with ``text`` written on a dark box at ``xy``."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    font = get_font(font_size)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle([left - 3, top - 2, right + 3, bottom + 2], fill=(0, 0, 0))
    draw.text(xy, text, fill=TEXT_COLOR, font=font)
    return np.asarray(im, dtype=np.uint8)


def nice_length(target: float) -> float:
    """The 1, 2 or 5 x 10^k closest (in ratio) to ``target`` (> 0)."""
    k = math.floor(math.log10(target))
    return min((m * 10.0 ** e for e in (k, k + 1) for m in (1, 2, 5)), key=lambda v: abs(math.log(v / target)))


def draw_scale_bar(image: np.ndarray, metres_per_pixel: float, xy: Tuple[int, int],
                   fraction: float = 0.2, font_size: int = 13) -> np.ndarray:
    """A copy of ``image`` with a metric scale bar whose left end is at ``xy``
    (pixels, the bar's baseline): a round length near ``fraction`` of the
    picture's width, ticks at both ends and half way, labelled ``N m``."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    metres = nice_length(fraction * im.width * metres_per_pixel)
    px = max(1, int(round(metres / metres_per_pixel)))
    x, y = int(xy[0]), int(xy[1])
    draw.rectangle([x, y - 2, x + px, y], fill=TEXT_COLOR)
    for t in (x, x + px // 2, x + px):
        draw.line([t, y - (7 if t != x + px // 2 else 5), t, y], fill=TEXT_COLOR, width=2)
    label = f"{metres:g} m"
    draw.text((x + px + 6, y - 12), label, fill=TEXT_COLOR, font=get_font(font_size))
    return np.asarray(im, dtype=np.uint8)


def draw_arrow(image: np.ndarray, start: Tuple[float, float], direction: Tuple[float, float],
               length: float = 28.0, label: str = "forward", color: Tuple[int, int, int] = (255, 230, 0),
               font_size: int = 13) -> np.ndarray:
    """A copy of ``image`` with an arrow from ``start`` (pixels) along
    ``direction`` (pixels, any length; +x right, +y down) and ``label``
    beside its tail."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    d = np.asarray(direction, dtype=np.float64)
    d = d / (np.linalg.norm(d) or 1.0)
    x0, y0 = float(start[0]), float(start[1])
    x1, y1 = x0 + length * d[0], y0 + length * d[1]
    draw.line([x0, y0, x1, y1], fill=color, width=3)
    n = np.array([-d[1], d[0]])
    head = [(x1 + 4 * d[0], y1 + 4 * d[1]), (x1 - 6 * d[0] + 6 * n[0], y1 - 6 * d[1] + 6 * n[1]),
            (x1 - 6 * d[0] - 6 * n[0], y1 - 6 * d[1] - 6 * n[1])]
    draw.polygon(head, fill=color)
    font = get_font(font_size)
    tx = max(x0, x1) + 10 if abs(d[0]) > 0.3 else x0 + 10
    draw.text((tx, max(y0, y1) - 12), label, fill=color, font=font)
    return np.asarray(im, dtype=np.uint8)
