"""Legends: class-name -> colour swatches drawn with Pillow."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SWATCH = 14  # swatch side, pixels
ROW = 20  # row pitch, pixels
PAD = 8
TEXT_COLOR = (235, 235, 235)
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


def draw_legend(entries: Sequence[Tuple[str, Sequence[int]]], height: int,
                title: Optional[str] = None, font_size: int = 13) -> np.ndarray:
    """A legend panel ``(height, W, 3) uint8``: one swatch and name per entry,
    in as many columns as ``height`` needs."""
    font = get_font(font_size)
    rows_per_col = max(1, (height - 2 * PAD - (ROW if title else 0)) // ROW)
    ncols = max(1, -(-len(entries) // rows_per_col))
    text_w = max([_text_width(font, name) for name, _ in entries] + [_text_width(font, title or "")])
    col_w = SWATCH + 6 + text_w + PAD
    width = max(PAD + ncols * col_w, 2 * PAD + 40)
    panel = Image.new("RGB", (width, int(height)), PANEL_COLOR)
    draw = ImageDraw.Draw(panel)
    y0 = PAD
    if title:
        draw.text((PAD, y0), title, fill=TEXT_COLOR, font=font)
        y0 += ROW
    for k, (name, rgb) in enumerate(entries):
        c, r = divmod(k, rows_per_col)
        x, y = PAD + c * col_w, y0 + r * ROW
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=tuple(int(v) for v in rgb),
                       outline=(200, 200, 200))
        draw.text((x + SWATCH + 6, y), name, fill=TEXT_COLOR, font=font)
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
