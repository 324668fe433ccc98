"""What the LiDAR readers share: the ``on_bad_sample`` policy."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch

from common.data import BadSamplePolicy, check_on_bad_sample
from common.errors import DataError

from .labelmap import IGNORE_INDEX

logger = logging.getLogger(__name__)


class ScanReader(BadSamplePolicy, torch.utils.data.Dataset):
    """Subclasses call ``super().__init__(root, name, on_bad_sample)``, fill
    ``samples``, implement ``load(index)``, which raises :class:`DataError`
    (or ``OSError``) naming the file on bad data, and ``sample_id(index)``;
    an empty split raises :class:`DataError` naming its folder.

    Every scan of the split stays listed; a bad one is found when it is read.
    With ``on_bad_sample='skip'`` (:class:`common.data.BadSamplePolicy`) it
    is logged and, in training, replaced by the next readable scan (an empty
    scan counts as bad there), so an epoch keeps its length and training never
    stalls; in evaluation it is dropped and listed; ``cdcl predict`` always
    raises, since a submission needs a file for every scan (an empty scan is
    read and gets an empty file).
    """

    kind = "LiDAR"
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str, name: str, on_bad_sample: str = "raise") -> None:
        self.root = os.fspath(root)
        self.name = name
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.samples: list = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.read_sample(index, self._load_for_policy)

    def _load_for_policy(self, index: int) -> Dict[str, Any]:
        item = self.load(index)
        if self.bad_action == "replace" and len(item["points"]) == 0:
            raise DataError(f"{item['path']}: no points")  # nothing to train on
        return item
