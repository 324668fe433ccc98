"""Multi-dataset loading: one loader per dataset, each cycled forever, resumable.

Every dataset gets its own :class:`InfiniteLoader` with its own batch size and
seed. An epoch's order is a permutation drawn from ``(seed, epoch)`` and every
sample is loaded under RNG state derived from ``(seed, epoch, index)``, so
augmentation is reproducible whatever the number of workers, and a resumed
run (``state_dict`` → ``load_state_dict``) continues with exactly the batches
an uninterrupted run would have seen. Under DDP each loader shards its
permutation by rank (what ``DistributedSampler`` does).
"""
from __future__ import annotations

import contextlib
import logging
import random
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError

logger = logging.getLogger(__name__)


def loader_seed(seed: int, name: str) -> int:
    """The loader seed of dataset ``name`` in a run of ``train.seed`` = ``seed``:
    from the name, not the dataset's position in ``data:``, so a dataset draws
    the same batches alone and beside others (the paired design of a study)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))]).generate_state(1)[0] % 2 ** 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededDataset(Dataset):
    """Loads ``base[index]`` with python/numpy/torch RNGs seeded per sample.

    Items of the index stream are ``(index, seed)``. In the main process the
    global RNG state is restored afterwards so that loading never disturbs the
    training RNG (dropout etc.).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        in_worker = torch.utils.data.get_worker_info() is not None
        if not in_worker:
            saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.base[index]
        finally:
            if not in_worker:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


class InfiniteLoader:
    """Yields batches of one dataset forever; position is part of its state."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0,
                 collate_fn: Optional[Callable] = None, num_workers: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> None:
        if len(dataset) == 0:
            raise ValueError(f"dataset {getattr(dataset, 'name', type(dataset).__name__)} is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.epoch = 0
        self.position = 0  # batches of the current epoch already consumed
        self._iter: Optional[Iterator] = None

    def _epoch_indices(self, epoch: int) -> List[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1 % (2 ** 31)))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        # Every rank gets the same number of full batches: repeat the order
        # when the dataset is smaller than one global batch, drop the tail.
        global_batch = self.batch_size * self.world_size
        while len(order) < global_batch:
            order = order + order
        usable = len(order) // global_batch * global_batch
        return order[self.rank:usable:self.world_size]

    def batches_per_epoch(self) -> int:
        return len(self._epoch_indices(0)) // self.batch_size

    def _batches(self, epoch: int) -> List[List[Tuple[int, int]]]:
        idx = self._epoch_indices(epoch)
        items = [(i, sample_seed(self.seed, epoch, i)) for i in idx]
        return [items[k:k + self.batch_size] for k in range(0, len(items), self.batch_size)]

    def _start(self) -> None:
        batches = self._batches(self.epoch)[self.position:]
        loader = DataLoader(SeededDataset(self.dataset), batch_sampler=batches,
                            collate_fn=self.collate_fn, num_workers=self.num_workers,
                            pin_memory=self.pin_memory,
                            # a private generator: creating the iterator must
                            # not consume the global torch RNG
                            generator=torch.Generator().manual_seed(self.seed),
                            persistent_workers=False)
        self._iter = iter(loader)

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self):
        while True:
            if self._iter is None:
                self._start()
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch += 1
                self.position = 0
                self._iter = None
                continue
            self.position += 1
            return batch

    @property
    def progress(self) -> float:
        """Epochs completed, fractional."""
        return self.epoch + self.position / max(1, self.batches_per_epoch())

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iter = None


class MultiLoader:
    """``{name: InfiniteLoader}``; ``next()`` gives ``{name: batch}``."""

    def __init__(self, loaders: Dict[str, InfiniteLoader], reference: Optional[str] = None) -> None:
        self.loaders = loaders
        self.reference = reference or next(iter(loaders))

    def next(self, names: Optional[List[str]] = None) -> Dict[str, Any]:
        return {n: next(self.loaders[n]) for n in (names or list(self.loaders))}

    @property
    def epoch(self) -> float:
        return self.loaders[self.reference].progress

    def state_dict(self) -> Dict[str, Dict[str, int]]:
        return {n: l.state_dict() for n, l in self.loaders.items()}

    def load_state_dict(self, state: Dict[str, Dict[str, int]]) -> None:
        for n, s in state.items():
            if n in self.loaders:
                self.loaders[n].load_state_dict(s)


class RemapLabels(Dataset):
    """Maps the label fields of every item through a lookup table (label remapping)."""

    FIELDS = ("labels", "points_labels")

    def __init__(self, base: Dataset, lut: np.ndarray, class_names: List[str]) -> None:
        self.base = base
        self.lut = torch.as_tensor(lut, dtype=torch.int64)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = getattr(base, "ignore_index", 255)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i: int):
        item = dict(self.base[i])
        for key in self.FIELDS:
            v = item.get(key)
            if isinstance(v, torch.Tensor):
                item[key] = self.lut[v.long()]
            elif isinstance(v, np.ndarray):
                item[key] = self.lut.numpy()[v.astype(np.int64)]
        return item

    def map_frequencies(self, freq: np.ndarray) -> np.ndarray:
        """Per-class shares of the base's label space carried into this one
        (classes mapped to the ignore index drop out; renormalised to sum 1)."""
        freq = np.asarray(freq, dtype=np.float64)
        lut = self.lut.numpy()[:len(freq)]
        keep = (lut >= 0) & (lut < self.num_classes)
        out = np.bincount(lut[keep], weights=freq[keep], minlength=self.num_classes)
        total = out.sum()
        return out / total if total > 0 else out

    @property
    def scored_classes(self) -> List[int]:
        """The target ids that the table reaches: the only classes this dataset labels."""
        lut = self.lut.numpy()
        return sorted({int(t) for t in lut if 0 <= t < self.num_classes})


def unwrap_dataset(dataset: Dataset) -> Tuple[Dataset, Optional[RemapLabels]]:
    """The innermost dataset under wrappers that keep theirs in ``.base``
    (range images, remapping, subsets), and the :class:`RemapLabels` met on
    the way (None when the labels are the reader's own)."""
    remap = None
    while True:
        if isinstance(dataset, RemapLabels):
            remap = dataset if remap is None else remap
        inner = vars(dataset).get("base")  # not through RemapLabels.__getattr__
        if inner is None:
            return dataset, remap
        dataset = inner


def build_label_lut(mapping: Dict[int, int], ignore_index: int = 255, size: int = 256) -> np.ndarray:
    """Lookup table: ids in ``mapping`` go to their target, others to ignore."""
    lut = np.full(max(size, ignore_index + 1), ignore_index, dtype=np.int64)
    for src, dst in mapping.items():
        lut[int(src)] = int(dst)
    return lut


# -- bad samples ---------------------------------------------------------------------

ON_BAD_SAMPLE = ("raise", "skip")
BAD_SAMPLE_ERRORS = (ValueError, OSError)  # what a reader raises for a file it cannot use


def skipped_item(sample_id: Any, dataset: str, reason: str) -> Dict[str, Any]:
    """What a reader returns in place of a sample it cannot read, while it
    drops bad samples (evaluation under ``on_bad_sample: skip``)."""
    return {"skipped": str(reason), "id": sample_id, "dataset": dataset}


def is_skipped(item: Any) -> bool:
    return isinstance(item, dict) and "skipped" in item


class BadSamplePolicy:
    """``on_bad_sample`` for a reader (mixed into its Dataset).

    The reader's loading function raises ``ValueError``/``OSError`` on a bad
    file (a :class:`~common.errors.DataError` naming the file);
    :meth:`read_sample` then acts as the policy says:

    * ``raise`` (default): the error reaches the caller (one line from ``cdcl``).
    * ``skip``, in training (``"replace"``, the default action): the sample
      is logged and replaced by the next readable one (cyclically), so an
      epoch keeps its length and a loader never stalls;
    * ``skip``, in evaluation (``"drop"``, set by :func:`bad_sample_action`):
      the sample is logged and returned as a :func:`skipped_item`, which
      :class:`DropSkipped` leaves out of the batch and lists: a bad sample is
      never silently replaced by (and counted as) another one.

    ``cdcl predict`` asks for ``"raise"`` whatever the setting: a submission
    needs a file for every sample the benchmark expects.

    Subclasses set ``on_bad_sample`` (:func:`check_on_bad_sample`), ``name``
    and ``root`` and implement ``sample_id(index)``.
    """

    on_bad_sample: str = "raise"
    _bad_action: Optional[str] = None  # set by bad_sample_action()

    @property
    def bad_action(self) -> str:
        """``"raise"``, ``"replace"`` or ``"drop"``: what a bad sample gets now."""
        if self._bad_action is not None:
            return self._bad_action
        return "replace" if self.on_bad_sample == "skip" else "raise"

    def sample_id(self, index: int) -> Any:
        """The id a skipped sample is listed under; each reader defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define sample_id(index)")

    def read_sample(self, index: int, load: Callable[[int], Any]) -> Any:
        """``load(index)`` under the policy (see the class docstring)."""
        action = self.bad_action
        if action == "raise":
            return load(index)
        n = len(self)
        for k in range(n if action == "replace" else 1):
            i = (index + k) % n
            try:
                return load(i)
            except BAD_SAMPLE_ERRORS as exc:
                logger.warning("skipping bad sample %s of %s: %s", self.sample_id(i), self._policy_name, exc)
                if action == "drop":
                    return skipped_item(self.sample_id(i), self._policy_name, str(exc))
        raise DataError(f"{self._policy_name}: no readable sample in {self.root}: all {n} are bad "
                        "(on_bad_sample: skip; see the warnings above)")

    @property
    def _policy_name(self) -> str:
        return getattr(self, "dataset_name", None) or getattr(self, "name", type(self).__name__)


def check_on_bad_sample(value: str) -> str:
    if value not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {value!r}")
    return value


@contextlib.contextmanager
def bad_sample_action(dataset: Dataset, action: str) -> Iterator[None]:
    """Within the block the reader under ``dataset`` (through ``.base``
    wrappers) meets a bad sample with ``action``: ``"drop"`` (evaluation:
    only where ``on_bad_sample`` is ``skip``, else it still raises) or
    ``"raise"`` (whatever the setting). No-op for datasets without a policy."""
    if action not in ("drop", "raise"):
        raise ValueError(f"bad_sample_action: action must be 'drop' or 'raise', got {action!r}")
    reader, _ = unwrap_dataset(dataset)
    if not isinstance(reader, BadSamplePolicy):
        yield
        return
    saved = reader._bad_action
    reader._bad_action = "drop" if action == "drop" and reader.on_bad_sample == "skip" else "raise"
    try:
        yield
    finally:
        reader._bad_action = saved


class DropSkipped:
    """Collate wrapper for evaluation: collates a batch's readable items and
    lists the skipped ones. Returns ``{"batch": the collated batch, or None
    when every item was skipped, "samples": number of readable items,
    "skipped": [(id, reason), ...]}``; :class:`SkipTracker` unpacks it."""

    def __init__(self, collate_fn: Optional[Callable] = None) -> None:
        from torch.utils.data.dataloader import default_collate

        self.collate_fn = collate_fn or default_collate

    def __call__(self, items: List[Any]) -> Dict[str, Any]:
        good = [it for it in items if not is_skipped(it)]
        return {"batch": self.collate_fn(good) if good else None, "samples": len(good),
                "skipped": [(it["id"], it["skipped"]) for it in items if is_skipped(it)]}


class SkipTracker:
    """Iterates the batches of a loader collated by :class:`DropSkipped` and
    counts: ``samples`` (readable items yielded) and ``skipped`` (``[(id,
    reason), ...]`` in loader order)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.samples = 0
        self.skipped: List[Tuple[Any, str]] = []

    def __len__(self) -> int:
        """Batches of the loader (a batch whose items were all skipped included)."""
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for out in self.loader:
            self.samples += out["samples"]
            self.skipped.extend(out["skipped"])
            if out["batch"] is not None:
                yield out["batch"]
