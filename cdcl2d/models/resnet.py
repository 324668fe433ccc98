"""ResNet-18 / 50 / 101 with dilation in every block type and a pluggable norm.

The module tree and state-dict keys match torchvision's (``conv1``, ``bn1``,
``layer1.0.conv1`` ... ``layer1.0.downsample.0/1``, ``fc``) so ImageNet weights
saved by torchvision load unchanged. Unlike torchvision, :class:`BasicBlock`
accepts ``dilation > 1``: the paper's PSPNet-R18 runs stages 3 and 4 dilated
(output stride 8).
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Type, Union

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution whose padding keeps the size (up to the stride)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; both use ``dilation`` (the first block of a
    dilated stage uses the previous dilation in its first conv, as in the
    DeepLab/PSPNet recipe)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, dilation: int = 1,
                 first_dilation: Optional[int] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, dilated) - 1x1, stride on the 3x3 (ResNet v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, dilation: int = 1,
                 first_dilation: Optional[int] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """ResNet trunk plus the ImageNet ``fc`` (kept so the key layout matches
    torchvision; segmentation models call :meth:`forward_features`)."""

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs 3 booleans (stages 2, 3, 4), "
                             f"got {replace_stride_with_dilation!r}")
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, False, norm_layer)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0], norm_layer)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1], norm_layer)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2], norm_layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.channels = [64 * block.expansion, 128 * block.expansion,
                         256 * block.expansion, 512 * block.expansion]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int,
                    dilate: bool, norm_layer: NormLayer) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            # Trade the stride for dilation: same receptive field, no downsampling.
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers: List[nn.Module] = [block(self.inplanes, planes, stride, downsample,
                                         dilation=self.dilation, first_dilation=previous_dilation,
                                         norm_layer=norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of the four stages ``[c1, c2, c3, c4]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c4 = self.forward_features(x)[-1]
        return self.fc(torch.flatten(self.avgpool(c4), 1))


_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def build_resnet(name: str, replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 norm_layer: NormLayer = nn.BatchNorm2d, pretrained: Optional[str] = None) -> ResNet:
    """ResNet by name (``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``);
    ``pretrained`` is a local torchvision-layout weights file."""
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(_SPECS)}")
    block, layers = _SPECS[name]
    model = ResNet(block, layers, replace_stride_with_dilation=replace_stride_with_dilation,
                   norm_layer=norm_layer)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2)."""
    return build_resnet("resnet18", **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3)."""
    return build_resnet("resnet50", **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3)."""
    return build_resnet("resnet101", **kwargs)


def load_pretrained(model: ResNet, path: str) -> ResNet:
    """Load ImageNet weights saved by torchvision (``resnet18-f37072fd.pth``
    and friends) from a local file; ``fc`` is ignored.

    Raises FileNotFoundError when ``path`` is missing and ValueError listing
    the missing/unexpected keys when the layout does not match ``model``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights {path!r} not found: download torchvision's ImageNet "
            "checkpoint (e.g. resnet18-f37072fd.pth from download.pytorch.org/models/) "
            "and put it at that path, or set model.pretrained to null")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k for k in model.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"{path}: key layout does not match {type(model).__name__}; "
            f"missing {len(missing)}: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"unexpected {len(unexpected)}: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    own_state = model.state_dict()
    for k, v in state.items():
        if own_state[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects "
                             f"{tuple(own_state[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model
