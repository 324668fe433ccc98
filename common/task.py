"""What the generic trainer asks of a task package.

A task (``"3d"`` for range-image LiDAR, ``"2d"`` for images, ``"toy"`` for the
core's own tests) subclasses :class:`Task` and registers an instance in
:data:`common.registry.TASKS`. The trainer and every ``cdcl`` command talk
to datasets and models only through these methods; a feature a task lacks
(predictions, pictures, a demo) raises a :class:`common.errors.UserError`
that says so, or does nothing where it is optional (TensorBoard images).

Contracts
---------
* A dataset is a ``torch.utils.data.Dataset`` whose items are dicts and which
  has ``class_names: list[str]`` (one per training class, in train-id order)
  and ``ignore_index: int`` (label value the loss and metrics skip; 255 in
  this project).
* After ``collate_fn`` a batch is a dict holding at least ``"inputs"``
  (a float tensor ``(B, C, ...)``) and, for labelled splits, ``"labels"``
  (a long tensor matching the model's dense output, ``(B, H, W)``).
* ``build_model(model_cfg, num_classes, norm_layer)`` (``norm_layer=None``:
  the model's own default norm) returns a *plain*
  single-dataset network (ordinary norm layers, one classifier with
  ``num_classes`` outputs) with an attribute ``heads: list[str]``: the dotted
  paths of its classifier layers (``nn.Conv*``/``nn.Linear`` whose outputs are
  the classes). The strategy then turns norms/heads dataset-specific with the
  converters in :mod:`common.dataset_specific`.
* The model returns logits, a tensor ``(B, K, ...)``, or a dict of them
  (``{"out": ..., "aux": ...}``). Under a fused route each per-dataset head
  returns ``{dataset_name: logits_chunk}`` instead of one tensor;
  :func:`common.engine.select_output` takes a dataset's part out of
  either form.
* A criterion is ``criterion(output, batch) -> scalar loss`` where ``output``
  is that dataset's part of the model output.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from .metrics import ConfusionMatrix

Batch = Dict[str, Any]


class Task:
    """Base class with the defaults that dense per-pixel tasks share."""

    name: str = "base"
    #: the keys ``eval.options`` / ``data.<name>.eval`` may hold and their types
    #: (checked with the config; None: not checked)
    eval_option_types: Optional[Dict[str, Any]] = None

    # -- config ---------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """Raise :class:`common.config.ConfigError` for what this task cannot use in
        the sections it owns (``data.<name>`` extras, ``eval.options``), naming
        the key; runs when the config is built, before any work.
        :meth:`check_data` per dataset, then the evaluation options."""
        from .config import check_options

        self.check_model(dict(cfg.model), cfg.source)
        for name, entry in cfg.data.items():
            self.check_data(name, entry.as_dict(), cfg.source)
        if self.eval_option_types is not None:
            check_options(cfg.eval.options, self.eval_option_types, "eval.options", cfg.source)
            for name, entry in cfg.data.items():
                check_options(entry.eval, self.eval_option_types, f"data.{name}.eval", cfg.source)

    def check_model(self, model_cfg: Dict[str, Any], source: str = "") -> None:
        """Check ``model`` (the builder's name and keyword arguments: keys and
        types) without building it; the default accepts anything."""

    def check_data(self, name: str, cfg: Dict[str, Any], source: str = "") -> None:
        """Check ``data.<name>`` (``cfg``, flat as :meth:`build_dataset` gets it)
        without reading files; the default accepts anything."""

    # -- data -----------------------------------------------------------------
    def build_dataset(self, name: str, cfg: Dict[str, Any], split: str,
                      train: bool) -> torch.utils.data.Dataset:
        """Dataset ``name`` (its config entry ``cfg`` = ``data.<name>``)."""
        raise NotImplementedError

    def num_classes(self, name: str, cfg: Dict[str, Any]) -> Optional[int]:
        """Class count known from the dataset type alone (no files read), or None."""
        return None

    def collate_fn(self, name: str, cfg: Dict[str, Any]) -> Optional[Callable]:
        """Collate function for ``name``'s DataLoader (None: torch default)."""
        return None

    # -- model ----------------------------------------------------------------
    def build_model(self, model_cfg: Dict[str, Any], num_classes: int,
                    norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        raise NotImplementedError

    def input_shape(self, name: str, cfg: Dict[str, Any]) -> tuple:
        """Shape of one input ``(C, ...)`` for FLOP counts in ``cdcl info``."""
        raise NotImplementedError

    # -- loss and forward -----------------------------------------------------
    def build_criterion(self, name: str, cfg: Dict[str, Any], dataset,
                        model_cfg: Dict[str, Any]) -> Callable[[Any, Batch], torch.Tensor]:
        ignore = getattr(dataset, "ignore_index", 255)

        def criterion(output, batch: Batch) -> torch.Tensor:
            logits = output["out"] if isinstance(output, dict) else output
            return nn.functional.cross_entropy(logits, batch["labels"], ignore_index=ignore)

        return criterion

    def forward(self, model: nn.Module, batch: Batch):
        """Run the model on a batch (already on the device)."""
        return model(batch["inputs"])

    # -- evaluation -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, name: str, dataset,
                 device: torch.device, cfg: Dict[str, Any]) -> Dict[str, ConfusionMatrix]:
        """Confusion matrices of ``model`` (routed to ``name`` by the caller)
        on ``loader``. Keys name evaluation variants (``"dense"``,
        ``"points"``, ``"points_knn"`` ...); the first key is the headline."""
        from .utils import to_device

        cm = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index,
                             class_names=dataset.class_names, device=device)
        for batch in loader:
            batch = to_device(batch, device)
            out = self.forward(model, batch)
            logits = out["out"] if isinstance(out, dict) else out
            cm.update(logits.argmax(1), batch["labels"])
        return {"dense": cm}

    def eval_notes(self, name: str, options: Dict[str, Any]) -> Dict[str, Any]:
        """How ``options`` (the evaluation options of ``name``) evaluate, as
        ``{key: str}`` fields of the dataset's result, each also a line under
        its table's title (LiDAR: ``{"tta": "off"}``); the default: none."""
        return {}

    def predict(self, model: nn.Module, loader, name: str, dataset, device: torch.device,
                out_dir: str, options: Dict[str, Any]) -> Optional[int]:
        """``cdcl predict``: write ``model``'s predictions (routed to ``name`` by
        the caller) on ``loader`` under ``out_dir`` in the benchmark's
        submission format; ``options`` are the evaluation options plus
        ``split``. Returns the number of files written (or None)."""
        from .errors import UserError
        raise UserError(f"the {self.name!r} task writes no predictions (cdcl predict)")

    # -- pictures ---------------------------------------------------------------
    def log_images(self, writer, model: nn.Module, datasets: Dict[str, Any], cfg, device: torch.device,
                   step: int) -> None:
        """TensorBoard pictures of ``datasets`` (the validation sets) at each
        evaluation during training; the default draws none."""

    def show(self, cfg, name: str, split: str, index: int, checkpoint: Optional[str] = None,
             color: Optional[str] = None, png: Optional[str] = None, **options: Any) -> Optional[str]:
        """``cdcl show CONFIG``: draw sample ``index`` of dataset ``name``
        (split ``split``) with its labels and, given a ``checkpoint``, the
        prediction, in colour mode ``color`` (None: the task's default); write
        it to ``png`` (None: a default name) and return the path, or None
        where a window was shown instead. ``options`` are the other ``cdcl
        show`` options (picture size, camera ...); a task reads those it knows."""
        from .errors import ShowError
        raise ShowError(f"the {self.name!r} task draws no pictures")

    def demo(self, args) -> int:
        """``cdcl demo --task NAME``: generate data, train, print a table."""
        from .errors import UserError
        raise UserError(f"the {self.name!r} task has no demo (cdcl demo --task 3d or 2d)")

    def miou_mode(self, name: str, cfg: Dict[str, Any]) -> str:
        """``"all"`` (SemanticKITTI: every class, absent ones 0) or ``"present"``
        (nuScenes, cityscapesscripts: classes with a non-empty union only)."""
        return "all"

    def miou_reference(self, name: str, cfg: Dict[str, Any]) -> Optional[str]:
        """The official evaluator whose mIoU :meth:`miou_mode` follows, named in
        table headers (``"nuScenes LidarSegEval"``); None: the dataset type."""
        return None
