"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet, as used by CDCL.

Backbone with output stride 8 (stages 3 and 4 dilated 2 and 4), pyramid
pooling over bins (1, 2, 3, 6), a 3x3 bottleneck, dropout and a 1x1 classifier
``cls``; an auxiliary head on stage 3 whose 1x1 classifier is ``aux`` (its loss
weighs 0.4). The model returns ``{"out": logits}`` in eval mode and
``{"out": ..., "aux": ...}`` in train mode, logits upsampled to the input size.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.engine import map_logits

from .resnet import NormLayer, build_resnet


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` that also exports to ONNX when the input
    is not a multiple of ``size`` (ONNX has no adaptive pooling: the exporter
    refuses e.g. 64 -> 3). While exporting, each bin is averaged over the
    same window as torch's definition, ``[floor(i*H/n), ceil((i+1)*H/n))``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.size
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if not torch.onnx.is_in_onnx_export() or (h % n == 0 and w % n == 0):
            return F.adaptive_avg_pool2d(x, n)
        edges = lambda length: [(i * length // n, -(-(i + 1) * length // n)) for i in range(n)]
        rows = [torch.cat([x[..., r0:r1, c0:c1].mean((-2, -1), keepdim=True) for c0, c1 in edges(w)], -1)
                for r0, r1 in edges(h)]
        return torch.cat(rows, -2)


class PyramidPooling(nn.Module):
    """Average-pool to each bin size, reduce channels, upsample, concatenate
    with the input (output has ``2 * in_channels`` channels)."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        reduction = in_channels // len(bins)
        self.stages = nn.ModuleList([
            nn.Sequential(AdaptiveAvgPool(b), nn.Conv2d(in_channels, reduction, 1, bias=False),
                          norm_layer(reduction), nn.ReLU(inplace=True))
            for b in bins])
        self.out_channels = in_channels + reduction * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = [x] + [F.interpolate(stage(x), size, mode="bilinear", align_corners=False)
                       for stage in self.stages]
        return torch.cat(feats, 1)


def _conv_bn_relu_drop(in_ch: int, out_ch: int, dropout: float, norm_layer: NormLayer) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), norm_layer(out_ch),
                         nn.ReLU(inplace=True), nn.Dropout2d(dropout))


class PSPNet(nn.Module):
    """Dilated ResNet + pyramid pooling; ``heads = ["cls", "aux"]``."""

    def __init__(self, num_classes: int, backbone: str = "resnet18", pretrained: Optional[str] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d, bins: Sequence[int] = (1, 2, 3, 6),
                 channels: int = 512, aux_channels: int = 256, dropout: float = 0.1,
                 aux: bool = True, output_stride: int = 8) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        # Output stride 8 (the paper): stages 3 and 4 keep the resolution and
        # dilate 2 and 4. 16/32 are cheaper variants for CPU smoke runs.
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
        if output_stride not in dilate:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.backbone = build_resnet(backbone, replace_stride_with_dilation=dilate[output_stride],
                                     norm_layer=norm_layer, pretrained=pretrained)
        # The ImageNet classifier is never used here; dropping it keeps the
        # parameter count honest (pretrained loading happened before).
        self.backbone.fc = nn.Identity()
        c3, c4 = self.backbone.channels[2], self.backbone.channels[3]
        self.ppm = PyramidPooling(c4, bins, norm_layer)
        self.head = _conv_bn_relu_drop(self.ppm.out_channels, channels, dropout, norm_layer)
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.use_aux = aux
        if aux:
            self.aux_head = _conv_bn_relu_drop(c3, aux_channels, dropout, norm_layer)
            self.aux = nn.Conv2d(aux_channels, num_classes, 1)
        self.heads = ["cls", "aux"] if aux else ["cls"]
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> Dict[str, object]:
        size = x.shape[-2:]  # (H, W) of the input
        _, _, c3, c4 = self.backbone.forward_features(x)

        def upsample(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size, mode="bilinear", align_corners=False)

        # Under a fused route the classifiers return {dataset: chunk}; map_logits
        # upsamples each chunk.
        out = map_logits(upsample, self.cls(self.head(self.ppm(c4))))  # (B, K, H, W)
        if self.training and self.use_aux:
            aux = map_logits(upsample, self.aux(self.aux_head(c3)))  # (B, K, H, W)
            return {"out": out, "aux": aux}
        return {"out": out}


def build_pspnet(num_classes: int, backbone: str = "resnet18", pretrained: Optional[str] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d, **kwargs) -> PSPNet:
    """PSPNet on a dilated ResNet (``resnet18``/``resnet50``/``resnet101``);
    ``pretrained``: a local torchvision ImageNet checkpoint or None."""
    return PSPNet(num_classes, backbone=backbone, pretrained=pretrained, norm_layer=norm_layer, **kwargs)
