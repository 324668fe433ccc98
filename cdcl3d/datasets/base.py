"""What the LiDAR readers share: the ``on_bad_sample`` policy."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch

from .labelmap import IGNORE_INDEX

logger = logging.getLogger(__name__)


class ScanReader(torch.utils.data.Dataset):
    """Subclasses call ``super().__init__(root, name, on_bad_sample)``, fill
    ``samples`` and implement ``load(index)``, which raises ``ValueError``/``OSError`` on bad data.

    With ``on_bad_sample='skip'`` a scan that fails to load is logged and the
    next readable one is returned instead, so the length stays fixed.
    """

    kind = "LiDAR"
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str, name: str, on_bad_sample: str = "raise") -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.root = os.fspath(root)
        self.name = name
        self.on_bad_sample = on_bad_sample
        self.samples: list = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if self.on_bad_sample == "raise":
            return self.load(index)
        n = len(self.samples)
        for k in range(n):
            try:
                return self.load((index + k) % n)
            except (ValueError, OSError) as exc:
                logger.warning("skipping bad %s scan: %s", self.kind, exc)
        raise RuntimeError(f"no readable scan left in {self.kind} {self.name} ({self.root})")
