"""The image task ("2d"): what the generic trainer needs from cdcl2d.

Config keys read here (besides the core's generic ones):

* ``model``: ``name: pspnet`` plus :class:`cdcl2d.models.PSPNet` keyword
  arguments (``backbone``, ``pretrained``, ``bins``, ``channels``,
  ``aux_channels``, ``dropout``, ``aux``, ``output_stride``) and
  ``aux_weight`` (loss weight of the auxiliary head, default 0.4).
* ``data.<name>``: ``type`` (cityscapes, bdd100k, camvid, kitti), ``root``,
  ``crop`` ([h, w], default 512x512), ``scale`` ([min, max], default
  [0.5, 2.0]), ``flip``, ``jitter``, ``eval_size`` ([h, w] or null: whole
  image), ``eval`` (per-dataset inference options, see below).
* ``eval.options``: ``mode`` (whole | slide), ``crop``, ``stride``
  (default 2/3 of the crop), ``scales`` (e.g. [0.5, 0.75, 1.0, 1.25, 1.5,
  1.75]), ``flip``.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.config import DATA_KEYS, ConfigError, check_kwargs, check_options
from common.metrics import ConfusionMatrix
from common.task import Batch, Task

from .transforms import to_pair

logger = logging.getLogger(__name__)

Size = Union[int, Tuple[int, int]]  # an int or [height, width]
#: ``data.<name>`` keys of the image task beyond the core's, with their types
IMAGE_DATA_TYPES: Dict[str, Any] = {"crop": Size, "scale": Tuple[float, float], "flip": bool, "jitter": bool,
                                    "eval_size": Optional[Size]}
IMAGE_DATA_KEYS = tuple(IMAGE_DATA_TYPES)
DEFAULT_CROP = (512, 512)

# mIoU as each dataset's reference evaluator averages it (``common.metrics`` modes;
# "present": IoU is NaN where a class's union is empty and the mean skips it).
MIOU_MODES = {
    # cityscapesscripts evalPixelLevelSemanticLabeling: getIouScoreForLabel returns
    # NaN for an empty union, getScoreAverage averages the non-NaN scores.
    "cityscapes": ("present", "cityscapesscripts"),
    # KITTI semantic: "data format and metrics conform with Cityscapes" (cvlibs
    # eval_semseg), i.e. the same scripts.
    "kitti": ("present", "cityscapesscripts"),
    # bdd100k toolkit (bdd100k/eval/seg.py): IoU 0 for an empty union, mean over the
    # classes found in the ground truth (a class only predicted is left out).
    "bdd100k": ("gt", "bdd100k toolkit"),
    # CamVid has no official tool; the field's reference (mmsegmentation IoUMetric)
    # takes the NaN-mean over classes, as Cityscapes does.
    "camvid": ("present", "mmsegmentation IoUMetric; CamVid has no official tool"),
}


def collate(items: List[Dict[str, Any]]) -> Batch:
    """Stack items into a batch; images of different sizes are padded at the
    bottom/right (inputs with 0 = the normalised mean, labels with 255), and
    ``sizes`` keeps each item's own (H, W). The padding only stores the batch:
    :meth:`ImageTask.forward` and :meth:`ImageTask.predict_batch` run the
    network on each size's items unpadded (see :func:`by_size`)."""
    h = max(int(it["inputs"].shape[-2]) for it in items)
    w = max(int(it["inputs"].shape[-1]) for it in items)
    inputs = items[0]["inputs"].new_zeros(len(items), items[0]["inputs"].shape[0], h, w)
    has_labels = all("labels" in it for it in items)
    labels = torch.full((len(items), h, w), 255, dtype=torch.long) if has_labels else None
    sizes = []
    for i, it in enumerate(items):
        ih, iw = it["inputs"].shape[-2:]
        inputs[i, :, :ih, :iw] = it["inputs"]
        if labels is not None:
            labels[i, :ih, :iw] = it["labels"]
        sizes.append((int(ih), int(iw)))
    batch: Batch = {"inputs": inputs,  # (B, 3, H, W)
                    "id": [it.get("id") for it in items],
                    "dataset": [it.get("dataset") for it in items],
                    "sizes": sizes,
                    "orig_sizes": [tuple(it.get("orig_size", s)) for it, s in zip(items, sizes)]}
    if labels is not None:
        batch["labels"] = labels  # (B, H, W)
    return batch


def size_groups(sizes: Sequence[Tuple[int, int]]) -> List[Tuple[Tuple[int, int], List[int]]]:
    """``[((H, W), [item indices]), ...]``: the items of each distinct size, in
    order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault((int(size[0]), int(size[1])), []).append(i)
    return list(groups.items())


def by_size(fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor,
            sizes: Optional[Sequence[Tuple[int, int]]] = None, fill: float = 0) -> Any:
    """``fn(inputs)`` on a collated batch ``(B, C, H, W)`` without letting its
    padding in.

    When every item fills the batch (``sizes`` None or all ``(H, W)``: training
    crops, range images, ``eval_size``) this is one call. Otherwise ``fn`` runs
    once per size on those items cropped to it, so that zero padding reaches
    neither BatchNorm statistics (train mode, precise BN) nor pooling (PSPNet's
    global bin), and an image's result does not depend on its batch mates.
    ``fn`` returns tensors ``(b, ..., h, w)`` (or a dict of them); they are put
    back into a batch ``(B, ..., H, W)`` whose padding holds ``fill``.
    """
    if not sizes or all(tuple(s) == tuple(inputs.shape[-2:]) for s in sizes):
        return fn(inputs)
    out = None
    for (h, w), index in size_groups(sizes):
        out = _place(out, fn(inputs[index, :, :h, :w]), index, len(sizes), inputs.shape[-2:], fill)
    return out


def _place(dst: Any, src: Any, index: List[int], batch: int, size, fill: float) -> Any:
    """Write the items ``index`` of a batch (tensor or dict of tensors) into ``dst``."""
    if isinstance(src, dict):
        dst = dst if dst is not None else {}
        return {k: _place(dst.get(k), v, index, batch, size, fill) for k, v in src.items()}
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"by_size: outputs must be tensors or dicts of tensors, got {type(src).__name__}")
    if dst is None:
        dst = src.new_full((batch, *src.shape[1:-2], *size), fill)
    dst[index, ..., :src.shape[-2], :src.shape[-1]] = src
    return dst


class ImageTask(Task):
    """PSPNet on Cityscapes / BDD100K / CamVid / KITTI semantic."""

    name = "2d"
    eval_option_types = {"mode": str, "crop": Optional[Size], "stride": Optional[Size],
                         "scales": Optional[List[float]], "flip": bool}

    # -- config -------------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """Keys and types (see :meth:`Task.check_config`), then each dataset's
        inference options as :func:`cdcl2d.inference.inference_options` reads them."""
        from common.evaluation import eval_options

        from .inference import inference_options

        super().check_config(cfg)
        for name in cfg.data:
            try:
                inference_options(eval_options(cfg, name))
            except ValueError as exc:
                raise ConfigError(f"{cfg.source}: eval.options / data.{name}.eval: {exc}") from None

    def check_model(self, model_cfg: Dict[str, Any], source: str = "") -> None:
        from .models import PSPNet

        kwargs = dict(model_cfg)
        name = kwargs.pop("name", "pspnet")
        aux_weight = kwargs.pop("aux_weight", 0.4)  # a loss setting, read by build_criterion
        at = f"{source}: " if source else ""
        if name != "pspnet":
            raise ConfigError(f"{at}'model.name' is {name!r}; the image task provides: pspnet")
        check_options({"aux_weight": aux_weight}, {"aux_weight": float}, "model", source)
        check_kwargs(PSPNet.__init__, kwargs, "model", source, reserved=("num_classes", "norm_layer"))

    def check_data(self, name: str, cfg: Dict[str, Any], source: str = "") -> None:
        """``data.<name>``: a known type, known keys of the right types, sizes and
        scales that make sense, ``num_classes`` (if given) the type's."""
        from .datasets import READERS

        at = f"{source}: " if source else ""
        kind = cfg.get("type")
        if kind not in READERS:
            raise ConfigError(f"{at}'data.{name}.type' is {kind!r}; valid image dataset types: {', '.join(READERS)}")
        check_options({k: v for k, v in cfg.items() if k not in DATA_KEYS}, IMAGE_DATA_TYPES, f"data.{name}",
                      source)
        for key in ("crop", "eval_size"):
            if cfg.get(key) is not None and min(to_pair(cfg[key])) < 1:
                raise ConfigError(f"{at}'data.{name}.{key}' must be positive, got {cfg[key]!r}")
        if "scale" in cfg and not 0 < cfg["scale"][0] <= cfg["scale"][1]:
            raise ConfigError(f"{at}'data.{name}.scale' must be [min, max] with 0 < min <= max, "
                              f"got {cfg['scale']!r}")
        classes = READERS[kind].class_names
        if cfg.get("num_classes") is not None and classes and int(cfg["num_classes"]) != len(classes):
            raise ConfigError(f"{at}'data.{name}.num_classes' is {cfg['num_classes']} but {kind} has "
                              f"{len(classes)} classes")

    # -- data ---------------------------------------------------------------------
    def build_dataset(self, name: str, cfg: Dict[str, Any], split: str, train: bool):
        """A reader for ``data.<name>`` (``cfg``) with training or eval transforms."""
        from .datasets import READERS
        from .transforms import build_eval_transform, build_train_transform

        self.check_data(name, cfg)
        kind = cfg["type"]
        if not cfg.get("root"):
            raise ConfigError(f"'data.{name}.root' is empty: set it to the {kind} dataset folder")
        if train:
            transform = build_train_transform(
                crop=to_pair(cfg.get("crop", DEFAULT_CROP), f"data.{name}.crop"),
                scale=cfg.get("scale", (0.5, 2.0)), flip=bool(cfg.get("flip", True)),
                jitter=bool(cfg.get("jitter", True)))
        else:
            transform = build_eval_transform(
                None if cfg.get("eval_size") is None else to_pair(cfg["eval_size"], f"data.{name}.eval_size"))
        reader = READERS[kind]
        return reader(cfg["root"], split, transform=transform, dataset_name=name,
                      on_bad_sample=cfg.get("on_bad_sample", "raise"))

    def num_classes(self, name, cfg):
        from .datasets import READERS
        reader = READERS.get(cfg.get("type"))
        return len(reader.class_names) if reader is not None and reader.class_names else None

    def collate_fn(self, name: str, cfg: Dict[str, Any]) -> Optional[Callable]:
        return collate

    def miou_mode(self, name: str, cfg: Dict[str, Any]) -> str:
        """The official evaluator's mIoU for ``data.<name>.type`` (see ``MIOU_MODES``),
        so a subset (``eval.max_samples``, a small zero-shot set) scores as the
        official tool scores it."""
        return self._miou_row(name, cfg)[0]

    def miou_reference(self, name: str, cfg: Dict[str, Any]) -> str:
        return self._miou_row(name, cfg)[1]

    @staticmethod
    def _miou_row(name: str, cfg: Dict[str, Any]):
        kind = cfg.get("type")
        if kind not in MIOU_MODES:
            raise ValueError(f"data.{name}.type is {kind!r}; valid image dataset types: {', '.join(MIOU_MODES)}")
        return MIOU_MODES[kind]

    # -- model --------------------------------------------------------------------
    def build_model(self, model_cfg: Dict[str, Any], num_classes: int,
                    norm_layer: Optional[Callable[[int], nn.Module]] = None) -> nn.Module:
        """PSPNet from ``model`` (``name: pspnet`` + builder keywords)."""
        from .models import PSPNet

        self.check_model(model_cfg)
        kwargs = dict(model_cfg)
        kwargs.pop("name", None)
        kwargs.pop("aux_weight", None)  # a loss setting, read by build_criterion
        return PSPNet(num_classes, norm_layer=norm_layer or nn.BatchNorm2d, **kwargs)

    def input_shape(self, name: str, cfg: Dict[str, Any]) -> tuple:
        h, w = to_pair(cfg.get("crop", DEFAULT_CROP), f"data.{name}.crop")
        return (3, h, w)

    # -- loss and forward ---------------------------------------------------------
    def build_criterion(self, name: str, cfg: Dict[str, Any], dataset,
                        model_cfg: Dict[str, Any]) -> Callable[[Any, Batch], torch.Tensor]:
        """Cross-entropy (ignore 255) on ``out`` plus ``aux_weight`` (0.4) times
        cross-entropy on ``aux`` when the model returns it."""
        ignore = int(getattr(dataset, "ignore_index", 255))
        aux_weight = float(model_cfg.get("aux_weight", 0.4))

        def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            # float32 whatever the autocast dtype: the mean runs over ~10^5
            # pixels (fp16 overflows, bf16 keeps 8 bits)
            with torch.autocast(logits.device.type, enabled=False):
                return F.cross_entropy(logits.float(), labels, ignore_index=ignore)

        def criterion(output, batch: Batch) -> torch.Tensor:
            labels = batch["labels"]  # (B, H, W)
            if not isinstance(output, dict):
                return ce(output, labels)
            loss = ce(output["out"], labels)
            if "aux" in output and aux_weight:
                loss = loss + aux_weight * ce(output["aux"], labels)
            return loss

        return criterion

    def forward(self, model: nn.Module, batch: Batch):
        """``model(inputs)``; a batch of several image sizes runs once per size
        (:func:`by_size`), its outputs padded back with 0 where labels are 255."""
        return by_size(model, batch["inputs"], batch.get("sizes"))

    # -- evaluation ---------------------------------------------------------------
    @staticmethod
    def _logits_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            return out["out"] if isinstance(out, dict) else out
        return fn

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, inputs: torch.Tensor, options: Dict[str, Any],
                      sizes: Optional[Sequence[Tuple[int, int]]] = None) -> torch.Tensor:
        """Train-id predictions ``(B, H, W)`` under the inference ``options``;
        with ``sizes`` (a collated batch's) each image is predicted unpadded and
        its padding holds 0."""
        from .inference import infer, inference_options

        opts = inference_options(options)
        logits_fn = self._logits_fn(model)
        return by_size(lambda x: infer(logits_fn, x, **opts).argmax(1), inputs, sizes)  # (B, H, W)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, name: str, dataset, device: torch.device,
                 cfg: Dict[str, Any]) -> Dict[str, ConfusionMatrix]:
        """Confusion matrix over ``loader`` (whole image, sliding window and/or
        multi-scale + flip according to ``cfg`` = the eval options)."""
        from common.utils import to_device

        cm = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index,
                             class_names=dataset.class_names, device=device)
        for batch in loader:
            batch = to_device(batch, device)
            if "labels" not in batch:
                from common.errors import DataError
                raise DataError(f"{name}: the evaluation split has no labels (a test split? use "
                                "cdcl predict for it)")
            pred = self.predict_batch(model, batch["inputs"], cfg, batch.get("sizes"))
            cm.update(pred, batch["labels"])  # padding carries label 255
        return {"dense": cm}

    @torch.no_grad()
    def predict(self, model: nn.Module, loader, name: str, dataset, device: torch.device,
                out_dir: str, cfg: Dict[str, Any]) -> int:
        """Write one PNG per image at its original size.

        Cityscapes: ``{city}_{seq}_{frame}_gtFine_labelIds.png`` holding
        Cityscapes *label ids* (what cityscapesscripts'
        ``evalPixelLevelSemanticLabeling`` reads; it finds a prediction by the
        ``{city}_{seq}_{frame}`` part of the name). KITTI semantic: label ids
        too, under the image's own name. Other datasets: train-id PNGs named
        after the image. Returns the number of files written.
        """
        from PIL import Image

        from common.utils import to_device

        from .datasets.labels import cityscapes_train_to_id_lut

        kind = getattr(dataset, "name", "")
        to_label_ids = kind in ("cityscapes", "kitti")
        lut = cityscapes_train_to_id_lut()
        os.makedirs(out_dir, exist_ok=True)
        written = 0
        for batch in loader:
            inputs = to_device(batch["inputs"], device)
            pred = self.predict_batch(model, inputs, cfg, batch["sizes"]).cpu()  # (B, H, W) train ids
            for i, sample_id in enumerate(batch["id"]):
                h, w = batch["sizes"][i]
                p = pred[i, :h, :w]
                oh, ow = batch["orig_sizes"][i]
                if (oh, ow) != (h, w):  # eval_size resized the input: back to the original
                    p = F.interpolate(p[None, None].float(), (oh, ow), mode="nearest")[0, 0].long()
                p = p.numpy().astype(np.uint8)
                if to_label_ids:
                    p = lut[p]
                if kind == "cityscapes":
                    fname = sample_id.split("/")[-1] + "_gtFine_labelIds.png"
                else:
                    fname = str(sample_id).replace("/", "_") + ".png"
                Image.fromarray(p).save(os.path.join(out_dir, fname))
                written += 1
        return written

    def log_images(self, writer, model: nn.Module, datasets: Dict[str, Any], cfg, device: torch.device,
                   step: int) -> None:
        """TensorBoard: image | ground truth | prediction for each dataset's first
        validation image."""
        from common.checkpoint import unwrap
        from common.dataset_specific import route

        from .transforms import denormalize
        from .visualize import colorize

        model = unwrap(model)
        was_training = model.training
        model.eval()  # a single image must not touch the BN statistics
        try:
            for name, ds in datasets.items():
                item = ds[0]
                with route(model, name):
                    pred = self.predict_batch(model, item["inputs"][None].to(device), {})[0].cpu().numpy()
                img = denormalize(item["inputs"].numpy())
                gt = colorize(item["labels"].numpy(), ds.name) if "labels" in item else np.zeros_like(img)
                panel = np.concatenate([img, gt, colorize(pred, ds.name)], 1)  # (H, 3W, 3)
                writer.add_image(f"val/{name}", panel, step, dataformats="HWC")
        finally:
            model.train(was_training)

    # -- pictures -----------------------------------------------------------------
    def show(self, cfg, name: str, split: str, index: int, checkpoint: Optional[str] = None,
             color: Optional[str] = None, png: Optional[str] = None, **options: Any) -> Optional[str]:
        """image | ground truth | prediction (or error) as one PNG
        (:func:`cdcl2d.visualize.show_sample`)."""
        from .visualize import show_sample
        return show_sample(self, cfg, name, split, index, checkpoint, color, png, **options)

    # -- demo ---------------------------------------------------------------------
    def demo(self, args: argparse.Namespace) -> int:
        """Generate synthetic images if missing, train single-dataset Cityscapes
        and CDCL on Cityscapes + BDD100K + CamVid, print the mIoU table."""
        from .demo import run_demo
        return run_demo(args)
