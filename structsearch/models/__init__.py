"""Model registry: CIFAR VGG / ResNet / MobileNetV2, a small demo CNN, and torchvision models.

``build(name, num_classes=..., in_channels=...)`` builds by name; ``names()`` lists the
registered ones; ``torchvision:<name>`` builds any torchvision classifier without weights.
"""

from . import mobilenetv2_cifar, resnet_cifar, small_cnn, vgg  # noqa: F401  (registration)
from .mobilenetv2_cifar import CifarMobileNetV2
from .registry import TORCHVISION_PREFIX, build, default_input_size, names, register
from .resnet_cifar import CifarResNet
from .small_cnn import SmallCNN
from .vgg import VGG_CONFIGS, CifarVGG

__all__ = [
    "TORCHVISION_PREFIX",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarVGG",
    "SmallCNN",
    "VGG_CONFIGS",
    "build",
    "default_input_size",
    "names",
    "register",
]
