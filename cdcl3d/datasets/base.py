"""What the LiDAR readers share: the ``on_bad_sample`` policy."""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch

logger = logging.getLogger(__name__)


class ScanReader(torch.utils.data.Dataset):
    """Subclasses set ``samples``, ``name``, ``root``, ``on_bad_sample`` and
    implement ``load(index)``, which raises ``ValueError``/``OSError`` on bad data.

    With ``on_bad_sample='skip'`` a scan that fails to load is logged and the
    next readable one is returned instead, so the length stays fixed.
    """

    kind = "LiDAR"

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
