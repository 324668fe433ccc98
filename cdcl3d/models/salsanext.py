"""SalsaNext (Cortinhal et al. 2020) for spherical range images.

The blocks follow the published network layer for layer: three residual
context blocks, five residual encoder blocks (the last one without pooling),
four pixel-shuffle decoder blocks and a 1x1 classifier. As in the published
model every BatchNorm comes *after* its LeakyReLU (conv -> act -> norm).

Differences from the published code, all deliberate:

* the model returns logits (the loss applies the softmax);
* every norm layer is built by ``norm_layer(num_channels)`` so the same class
  builds with BatchNorm, dataset-aware BatchNorm or SyncBatchNorm;
* ``width`` scales every channel count (1.0 is the published network,
  6,711,572 parameters with 20 classes);
* an image whose height or width is not a multiple of 16 (the four poolings)
  is padded with zeros at the bottom and right, which is what an empty pixel
  holds after normalisation, and the logits are cropped back (a 40-beam
  Pandora's 40 x 1800 image runs as 48 x 1808).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

# Four encoder blocks pool by 2, so H and W are padded to multiples of 2**4.
_STRIDE = 16


class ResContextBlock(nn.Module):
    """1x1 shortcut, then 3x3 and 3x3 dilated 2, added to the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.act1 = nn.LeakyReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.act2 = nn.LeakyReLU()
        self.bn1 = norm_layer(out_ch)
        self.conv3 = nn.Conv2d(out_ch, out_ch, kernel_size=3, dilation=2, padding=2)
        self.act3 = nn.LeakyReLU()
        self.bn2 = norm_layer(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.act1(self.conv1(x))
        y = self.bn1(self.act2(self.conv2(shortcut)))
        y = self.bn2(self.act3(self.conv3(y)))
        return shortcut + y


class ResBlock(nn.Module):
    """Encoder block: a 1x1 shortcut and three stacked convolutions (3x3,
    3x3 dilated 2, 2x2 dilated 2) whose outputs are concatenated, fused by a
    1x1 convolution and added to the shortcut; then dropout and 3x3/2
    average pooling.

    ``forward`` returns ``(pooled, skip)`` when ``pooling`` is on (``skip`` is
    the full-resolution feature, taken before dropout), otherwise only the
    (dropped-out) feature.
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float, pooling: bool = True,
                 drop_out: bool = True, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.pooling = pooling
        self.drop_out = drop_out
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.act1 = nn.LeakyReLU()
        self.conv2 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.act2 = nn.LeakyReLU()
        self.bn1 = norm_layer(out_ch)
        self.conv3 = nn.Conv2d(out_ch, out_ch, kernel_size=3, dilation=2, padding=2)
        self.act3 = nn.LeakyReLU()
        self.bn2 = norm_layer(out_ch)
        # 2x2 kernel with dilation 2 spans 3x3; padding 1 keeps the size.
        self.conv4 = nn.Conv2d(out_ch, out_ch, kernel_size=2, dilation=2, padding=1)
        self.act4 = nn.LeakyReLU()
        self.bn3 = norm_layer(out_ch)
        self.conv5 = nn.Conv2d(out_ch * 3, out_ch, kernel_size=1)
        self.act5 = nn.LeakyReLU()
        self.bn4 = norm_layer(out_ch)
        self.dropout = nn.Dropout2d(p=dropout)
        if pooling:
            self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor):
        shortcut = self.act1(self.conv1(x))
        a1 = self.bn1(self.act2(self.conv2(x)))
        a2 = self.bn2(self.act3(self.conv3(a1)))
        a3 = self.bn3(self.act4(self.conv4(a2)))
        y = self.bn4(self.act5(self.conv5(torch.cat((a1, a2, a3), dim=1))))
        y = shortcut + y
        out = self.dropout(y) if self.drop_out else y
        if self.pooling:
            return self.pool(out), y
        return out


class UpBlock(nn.Module):
    """Decoder block: PixelShuffle(2) of the coarse input (channels / 4),
    concatenated with the encoder skip (2 * out_ch channels), then the same
    three-convolution + concat + 1x1 pattern as the encoder."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float, drop_out: bool = True,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if in_ch % 4:
            raise ValueError(f"UpBlock: in_ch={in_ch} must be divisible by 4 for PixelShuffle(2)")
        self.drop_out = drop_out
        self.shuffle = nn.PixelShuffle(2)
        self.dropout1 = nn.Dropout2d(p=dropout)
        self.dropout2 = nn.Dropout2d(p=dropout)
        self.conv1 = nn.Conv2d(in_ch // 4 + 2 * out_ch, out_ch, kernel_size=3, padding=1)
        self.act1 = nn.LeakyReLU()
        self.bn1 = norm_layer(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, dilation=2, padding=2)
        self.act2 = nn.LeakyReLU()
        self.bn2 = norm_layer(out_ch)
        self.conv3 = nn.Conv2d(out_ch, out_ch, kernel_size=2, dilation=2, padding=1)
        self.act3 = nn.LeakyReLU()
        self.bn3 = norm_layer(out_ch)
        self.conv4 = nn.Conv2d(out_ch * 3, out_ch, kernel_size=1)
        self.act4 = nn.LeakyReLU()
        self.bn4 = norm_layer(out_ch)
        self.dropout3 = nn.Dropout2d(p=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.shuffle(x)
        if self.drop_out:
            up = self.dropout1(up)
        up = torch.cat((up, skip), dim=1)
        if self.drop_out:
            up = self.dropout2(up)
        e1 = self.bn1(self.act1(self.conv1(up)))
        e2 = self.bn2(self.act2(self.conv2(e1)))
        e3 = self.bn3(self.act3(self.conv3(e2)))
        y = self.bn4(self.act4(self.conv4(torch.cat((e1, e2, e3), dim=1))))
        if self.drop_out:
            y = self.dropout3(y)
        return y


def _base_channels(width: float) -> int:
    """32 * width, rounded to an even number >= 2.

    The last decoder block pixel-shuffles 2 * base channels, which must be a
    multiple of 4, hence an even base.
    """
    if not width > 0:
        raise ValueError(f"SalsaNext: width must be > 0, got {width}")
    return max(2, 2 * int(round(16 * width)))


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    """Raise a clear error for a wrongly shaped range image."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"SalsaNext: expected input (B, {in_channels}, H, W), got {tuple(x.shape)}")


def _pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Zeros at the bottom and right up to multiples of ``_STRIDE``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % _STRIDE, 0, -h % _STRIDE)) if h % _STRIDE or w % _STRIDE else x


def _crop_to(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``logits`` cut back to the size of the input ``x``."""
    h, w = x.shape[-2:]
    return logits[..., :h, :w] if logits.shape[-2:] != x.shape[-2:] else logits


# Leaves for torch.fx: they branch on sizes, which symbolic tracing (used by
# BatchNorm folding) cannot follow.
torch.fx.wrap("_check_input")
torch.fx.wrap("_pad_to_stride")
torch.fx.wrap("_crop_to")


class SalsaNext(nn.Module):
    """SalsaNext on a ``(B, in_channels, H, W)`` range image -> logits
    ``(B, num_classes, H, W)``; H and W need not be multiples of 16 (padded
    inside, cropped back)."""

    def __init__(self, in_channels: int = 5, num_classes: int = 20, width: float = 1.0,
                 dropout: float = 0.2, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SalsaNext: num_classes must be >= 1, got {num_classes}")
        c = _base_channels(width)
        self.in_channels = in_channels
        self.num_classes = num_classes
        # Dotted paths of the classifier layers, for the dataset-specific converter.
        self.heads: List[str] = ["logits"]

        self.downCntx = ResContextBlock(in_channels, c, norm_layer)
        self.downCntx2 = ResContextBlock(c, c, norm_layer)
        self.downCntx3 = ResContextBlock(c, c, norm_layer)

        # The published model skips dropout in the first encoder block and
        # in the last decoder block.
        self.resBlock1 = ResBlock(c, 2 * c, dropout, pooling=True, drop_out=False, norm_layer=norm_layer)
        self.resBlock2 = ResBlock(2 * c, 4 * c, dropout, pooling=True, norm_layer=norm_layer)
        self.resBlock3 = ResBlock(4 * c, 8 * c, dropout, pooling=True, norm_layer=norm_layer)
        self.resBlock4 = ResBlock(8 * c, 8 * c, dropout, pooling=True, norm_layer=norm_layer)
        self.resBlock5 = ResBlock(8 * c, 8 * c, dropout, pooling=False, norm_layer=norm_layer)

        self.upBlock1 = UpBlock(8 * c, 4 * c, dropout, norm_layer=norm_layer)
        self.upBlock2 = UpBlock(4 * c, 4 * c, dropout, norm_layer=norm_layer)
        self.upBlock3 = UpBlock(4 * c, 2 * c, dropout, norm_layer=norm_layer)
        self.upBlock4 = UpBlock(2 * c, c, dropout, drop_out=False, norm_layer=norm_layer)

        self.logits = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        _check_input(inputs, self.in_channels)
        x = self.downCntx3(self.downCntx2(self.downCntx(_pad_to_stride(inputs))))
        d0, s0 = self.resBlock1(x)      # 1/2, skip at 1
        d1, s1 = self.resBlock2(d0)     # 1/4, skip at 1/2
        d2, s2 = self.resBlock3(d1)     # 1/8, skip at 1/4
        d3, s3 = self.resBlock4(d2)     # 1/16, skip at 1/8
        d5 = self.resBlock5(d3)         # 1/16
        u = self.upBlock1(d5, s3)
        u = self.upBlock2(u, s2)
        u = self.upBlock3(u, s1)
        u = self.upBlock4(u, s0)
        return _crop_to(self.logits(u), inputs)  # (B, K, H, W)


def build_salsanext(num_classes: int, width: float = 1.0, dropout: float = 0.2,
                    in_channels: int = 5, norm_layer: NormLayer = nn.BatchNorm2d) -> SalsaNext:
    """Build :class:`SalsaNext` (``width=1.0``: the published network)."""
    return SalsaNext(in_channels=in_channels, num_classes=num_classes, width=width,
                     dropout=dropout, norm_layer=norm_layer)


__all__: Tuple[str, ...] = ("SalsaNext", "build_salsanext",
                            "ResContextBlock", "ResBlock", "UpBlock")
