"""A user's own model and dataset factory, as a user would write them (not structsearch code):
a residual block, a concatenation of two branches, a depthwise conv and a squeeze-excitation
gate, on scikit-learn's digits up-sampled to 16x16 and served by a plain torch Dataset."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 4), 1)
        self.fc2 = nn.Conv2d(max(channels // reduction, 4), channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class UserNet(nn.Module):
    """stem -> residual block -> two branches concatenated -> depthwise + SE -> head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU())
        self.res1 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res1_bn = nn.BatchNorm2d(w)
        self.res2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res2_bn = nn.BatchNorm2d(w)
        self.branch_a = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, stride=1, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2, groups=2 * w,
                                          bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.se = SqueezeExcite(2 * w)
        self.pw = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w),
                                nn.ReLU())
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.res2_bn(self.res2(F.relu(self.res1_bn(self.res1(x))))))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pw(self.se(self.dw(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_net(num_classes: int = 10, width: int = 16) -> UserNet:
    """The entry point a config names: ``model.name: user_model:build_net``."""
    return UserNet(num_classes=num_classes, in_channels=1, width=width)


class DigitsDataset(torch.utils.data.Dataset):
    """(image, label) pairs: float (1, size, size) images, normalised by the user."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        self.x = (x - 0.3) / 0.38
        self.y = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def digits_data(size: int = 16, test_share: float = 0.25):
    """The entry point a config names: ``data.name: user_model:digits_data`` -> (train, test)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(123).permutation(len(digits.target))
    cut = int(len(order) * (1 - test_share))
    tr, te = order[:cut], order[cut:]
    return (DigitsDataset(digits.data[tr], digits.target[tr], size),
            DigitsDataset(digits.data[te], digits.target[te], size))
