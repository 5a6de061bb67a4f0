"""Small models built in code for the tests: they cover the structures real classifiers use."""

from __future__ import annotations

import torch
from torch import nn


class TinyBottleneck(nn.Module):
    """ResNet-style block: one ReLU(inplace=True) module reused three times, BN, skip connection."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """stem conv -> layer1 (2 blocks) -> layer2 (2 blocks, strided) -> pool -> fc."""

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(TinyBottleneck(width), TinyBottleneck(width))
        self.layer2 = nn.Sequential(TinyBottleneck(width, stride=2), TinyBottleneck(width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyInvertedResidual(nn.Module):
    """MobileNet/EfficientNet-Lite block: 1x1 expand, depthwise 3x3, 1x1 project, ReLU6, residual."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        hidden = channels * expand
        self.conv_pw = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6()
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.act2(self.bn2(self.conv_dw(out)))
        return x + self.bn3(self.conv_pwl(out))


class TinyMobileNet(nn.Module):
    """stem conv -> blocks (Sequential of Sequentials, like timm) -> conv_head -> pool -> classifier."""

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(nn.Sequential(TinyInvertedResidual(width)),
                                    nn.Sequential(TinyInvertedResidual(width), TinyInvertedResidual(width)))
        self.conv_head = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act_head = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.act(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act_head(self.bn2(self.conv_head(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def tiny_resnet(seed: int = 0, **kwargs) -> TinyResNet:
    torch.manual_seed(seed)
    return randomize_batchnorm(TinyResNet(**kwargs), seed)


def tiny_mobilenet(seed: int = 0, **kwargs) -> TinyMobileNet:
    torch.manual_seed(seed)
    return randomize_batchnorm(TinyMobileNet(**kwargs), seed)
