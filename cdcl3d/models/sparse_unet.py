"""A small MinkUNet-like sparse-voxel U-Net on spconv.

It shows that the CDCL core carries over to sparse convolutions: every norm is
an ordinary ``norm_layer(channels)`` module (``nn.BatchNorm1d`` by default)
applied to ``SparseConvTensor.features`` through :class:`SparseApply`, so
:func:`common.dataset_specific.convert_dataset_specific` finds each BatchNorm1d
and swaps it for a dataset-aware wrapper, and ``route(model, name)`` selects
the branch at forward time. (spconv's ``SparseSequential`` would also apply a
bare BatchNorm1d to the features, but only when it recognises the module type;
a wrapped norm would then receive the sparse tensor itself.)

Supported CDCL modes: ``dat`` and ``sequential`` (one dataset per forward
pass). The ``fused`` mode is *not* supported: a fused route splits dim 0 of
every wrapped layer's input by per-dataset *sample* counts, but the norms and
the classifier here see rows of voxels, whose counts are neither the sample
counts nor known to the core.

Convolution algorithm: spconv's CPU kernels only implement
``ConvAlgo.Native``; its faster implicit-GEMM algorithms need CUDA. The
algorithm is set on every conv at the start of each
:meth:`SparseUNet.forward` from the device of the input features: Native on
CPU, and on CUDA the ``algo`` given to the constructor (``None``: spconv's
own default, ``MaskImplicitGemm``). Switching is safe because spconv 2.x
keeps every weight in one layout (KRSC) whatever the algorithm, so a
checkpoint moves freely between CPU and GPU.
:func:`set_conv_algo` sets one algorithm on every conv of any module (for
use outside ``SparseUNet.forward``; the forward pass overrides it).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

import spconv.pytorch as spconv
from spconv.pytorch import ConvAlgo
from spconv.pytorch.conv import SparseConvolution

NormLayer = Callable[[int], nn.Module]

# spconv's default on a CUDA build for kernels of <= 32 taps (3x3x3 = 27).
CUDA_DEFAULT_ALGO = ConvAlgo.MaskImplicitGemm


def set_conv_algo(model: nn.Module, algo: ConvAlgo) -> nn.Module:
    """Use ``algo`` in every spconv convolution of ``model``; returns the model.

    Convs that share an ``indice_key`` must use the same algorithm (spconv
    asserts it), which setting them all at once guarantees.
    """
    for m in model.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo
    return model


class SparseApply(nn.Module):
    """Apply a dense module (norm, activation) to the features of a sparse tensor.

    The wrapped module is the attribute ``module``, an ordinary child, so
    module converters (dataset-aware BN, SyncBatchNorm) find and replace it.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return x.replace_feature(self.module(x.features))


class ConvNormAct(nn.Module):
    """Sparse conv -> norm -> ReLU."""

    def __init__(self, conv: nn.Module, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = conv
        self.norm = SparseApply(norm_layer(channels))
        self.act = SparseApply(nn.ReLU(inplace=True))

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return self.act(self.norm(self.conv(x)))


class ResBlock(nn.Module):
    """Two submanifold 3x3x3 convs with a residual; a 1x1x1 conv projects the
    shortcut when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer, indice_key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(in_ch, out_ch, 3, padding=1, bias=False, indice_key=indice_key)
        self.norm1 = SparseApply(norm_layer(out_ch))
        self.conv2 = spconv.SubMConv3d(out_ch, out_ch, 3, padding=1, bias=False, indice_key=indice_key)
        self.norm2 = SparseApply(norm_layer(out_ch))
        if in_ch != out_ch:
            self.shortcut: Optional[nn.Module] = nn.Sequential(
                spconv.SubMConv3d(in_ch, out_ch, 1, bias=False, indice_key=indice_key + "_1x1"),
                SparseApply(norm_layer(out_ch)))
        else:
            self.shortcut = None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.shortcut is None else self.shortcut(x).features
        out = self.relu(self.norm1(self.conv1(x)).features)
        out = self.norm2(self.conv2(x.replace_feature(out))).features
        return x.replace_feature(self.relu(out + identity))


class SparseUNet(nn.Module):
    """MinkUNet-like U-Net on voxels; returns per-point logits ``(ΣN, K)``.

    Levels ``i = 0..L-1`` with ``channels[i]`` features at stride ``2**i``:
    a stem (submanifold 3x3x3, ``in_channels -> base_channels``), then per
    level ``blocks`` residual blocks; between levels a 2x2x2 stride-2
    ``SparseConv3d`` down and a ``SparseInverseConv3d`` back up (sharing the
    ``indice_key``, so upsampling restores exactly the voxels of the finer
    level), the skip features concatenated and fused by a residual block.
    The classifier ``cls`` is an ``nn.Linear`` on voxel features; per-point
    logits are gathered with ``point2voxel`` (every point gets its voxel's
    logits).

    ``forward(batch)`` reads ``voxel_feats (V, C)``, ``voxel_coords (V, 4)``
    ``(b, z, y, x)``, ``spatial_shape``, ``batch_size`` and ``point2voxel
    (N,)`` as built by :func:`cdcl3d.voxel.collate_sparse`. Only ``dat`` and
    ``sequential`` training are supported (see the module docstring).
    """

    heads: List[str] = ["cls"]

    def __init__(self, in_channels: int = 4, num_classes: int = 19, base_channels: int = 16,
                 channels: Sequence[int] = (16, 32, 64, 128), blocks: int = 1,
                 norm_layer: Optional[NormLayer] = nn.BatchNorm1d,
                 algo: Optional[ConvAlgo] = None) -> None:
        super().__init__()
        norm_layer = nn.BatchNorm1d if norm_layer is None else norm_layer
        channels = list(channels)
        if not channels or blocks < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(f"bad SparseUNet arguments: channels={channels}, blocks={blocks}, "
                             f"in_channels={in_channels}, num_classes={num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.algo = algo
        # Every stride-2 level halves the grid; pad the grid so that no voxel
        # on the far edge is lost by a 2x2x2 stride-2 conv.
        self.grid_multiple = 2 ** (len(channels) - 1)

        self.stem = ConvNormAct(
            spconv.SubMConv3d(in_channels, base_channels, 3, padding=1, bias=False, indice_key="subm0"),
            base_channels, norm_layer)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = base_channels
        for i, ch in enumerate(channels):
            if i > 0:
                self.down.append(ConvNormAct(
                    spconv.SparseConv3d(prev, ch, 2, stride=2, bias=False, indice_key=f"down{i}"),
                    ch, norm_layer))
                prev = ch
            self.enc.append(nn.Sequential(*[
                ResBlock(prev if j == 0 else ch, ch, norm_layer, f"subm{i}") for j in range(blocks)]))
            prev = ch
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.up.append(ConvNormAct(
                spconv.SparseInverseConv3d(channels[i], channels[i - 1], 2, indice_key=f"down{i}",
                                           bias=False),
                channels[i - 1], norm_layer))
            self.dec.append(nn.Sequential(*[
                ResBlock(2 * channels[i - 1] if j == 0 else channels[i - 1], channels[i - 1],
                         norm_layer, f"subm{i - 1}") for j in range(blocks)]))
        self.cls = nn.Linear(channels[0], num_classes)

    def conv_algo(self, device: torch.device) -> ConvAlgo:
        """The algorithm :meth:`forward` uses on ``device``."""
        if device.type == "cpu":
            return ConvAlgo.Native
        return self.algo if self.algo is not None else CUDA_DEFAULT_ALGO

    def voxel_logits(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Logits per voxel ``(ΣV, K)``."""
        feats = batch["voxel_feats"]
        coords = batch["voxel_coords"]
        if feats.dim() != 2 or feats.shape[1] != self.in_channels:
            raise ValueError(f"voxel_feats must be (V, {self.in_channels}), got {tuple(feats.shape)}")
        if coords.shape != (feats.shape[0], 4):
            raise ValueError(f"voxel_coords must be (V, 4) (b, z, y, x) with V = {feats.shape[0]}, "
                             f"got {tuple(coords.shape)}")
        # Set on every pass (a walk over ~100 modules): cheap, and right even
        # after the model moved between devices or someone called set_conv_algo.
        set_conv_algo(self, self.conv_algo(feats.device))
        m = self.grid_multiple
        shape = [-(-int(s) // m) * m for s in batch["spatial_shape"]]
        x = spconv.SparseConvTensor(feats.float().contiguous(), coords.int().contiguous(), shape,
                                    int(batch["batch_size"]))
        x = self.enc[0](self.stem(x))
        skips = [x]
        for down, enc in zip(self.down, self.enc[1:]):
            x = enc(down(x))
            skips.append(x)
        skips.pop()  # the coarsest level is x itself
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            skip = skips.pop()
            x = dec(x.replace_feature(torch.cat([x.features, skip.features], dim=1)))
        return self.cls(x.features)

    def forward(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Per-point logits ``(ΣN, K)``: each point takes its voxel's logits."""
        return self.voxel_logits(batch)[batch["point2voxel"]]


def parse_conv_algo(algo: Union[None, str, ConvAlgo]) -> Optional[ConvAlgo]:
    """``None``/``"auto"`` -> None; a name (``"native"``, ``"MaskImplicitGemm"``,
    ``"mask_split_implicit_gemm"``) or a :class:`ConvAlgo` -> that algorithm."""
    if algo is None or isinstance(algo, ConvAlgo):
        return algo
    key = str(algo).replace("_", "").lower()
    if key == "auto":
        return None
    for name in ConvAlgo.__members__:
        if name.lower() == key:
            return ConvAlgo.__members__[name]
    valid = ", ".join(["auto"] + list(ConvAlgo.__members__))
    raise ValueError(f"unknown spconv algorithm {algo!r}; valid: {valid}")


def build_sparse_unet(num_classes: int, in_channels: int = 4, base_channels: int = 16,
                      channels: Sequence[int] = (16, 32, 64, 128), blocks: int = 1,
                      norm_layer: Optional[NormLayer] = None,
                      algo: Union[None, str, ConvAlgo] = None) -> SparseUNet:
    """Build :class:`SparseUNet` from config-style keyword arguments
    (``algo`` may be a name, see :func:`parse_conv_algo`; ``norm_layer=None``
    means ``nn.BatchNorm1d``)."""
    return SparseUNet(in_channels=in_channels, num_classes=num_classes,
                      base_channels=base_channels, channels=tuple(channels), blocks=blocks,
                      norm_layer=norm_layer, algo=parse_conv_algo(algo))
