"""Image models: dilated ResNets and PSPNet."""
from .pspnet import PSPNet, build_pspnet
from .resnet import ResNet, build_resnet, load_pretrained, resnet18, resnet50, resnet101

__all__ = ["PSPNet", "build_pspnet", "ResNet", "build_resnet", "load_pretrained",
           "resnet18", "resnet50", "resnet101"]
