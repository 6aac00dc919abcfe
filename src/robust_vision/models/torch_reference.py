"""PyTorch twins of the RobustBench architectures, for weight-import tests and for benchmarks
against PyTorch on the same weights (never imported by the training or evaluation code).

The modules follow RobustBench's definitions (``robustbench/model_zoo/architectures/resnet.py``
``PreActResNet``, ``wide_resnet.py`` ``WideResNet``) layer for layer, so their ``state_dict``
is what ``runs/import_weights.py`` reads. torch is an optional extra
(``pip install 'robust-vision[torch]'``) and this module imports it: import the module only
where torch is installed (tests and benchmarks do so inside their torch-only paths).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes=10, width=64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(2 * width, 2)
        self.layer3 = self._make_layer(4 * width, 2)
        self.layer4 = self._make_layer(8 * width, 2)
        self.bn = nn.BatchNorm2d(8 * width)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4).view(out.size(0), -1)
        return self.linear(out)


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                    stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen=10, num_classes=10):
        super().__init__()
        c = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, c[0], c[1], 1)
        self.sub_block1 = NetworkBlock(n, c[0], c[1], 1)  # in the reference, never called
        self.block2 = NetworkBlock(n, c[1], c[2], 2)
        self.block3 = NetworkBlock(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.fc = nn.Linear(c[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).view(out.size(0), -1))


def torch_architectures() -> tuple[Any, type, type]:
    """``(torch, PreActResNet18, WideResNet)``: the torch module and the two reference classes,
    ``PreActResNet18(num_classes=10, width=64)`` and ``WideResNet(depth=28, widen=10,
    num_classes=10)``; inputs (B, 3, H, W) float32, outputs logits (B, K)."""
    return torch, PreActResNet18, WideResNet


class CnnConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm1, self.norm2 = nn.BatchNorm2d(cout, eps=1e-5), nn.BatchNorm2d(cout, eps=1e-5)
        self.project = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        y = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(y + (self.project(x) if self.project is not None else x))


class ProductionCNN(nn.Module):
    def __init__(self, features=(32, 64, 128), num_classes=10):
        super().__init__()
        chans = [3, *features]
        self.blocks = nn.ModuleList(CnnConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(features[-1], num_classes)

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = F.avg_pool2d(x, 2)
        return self.head(self.dropout(x.mean(dim=(2, 3))))


def torch_production_cnn() -> type:
    """The project's ``cnn`` (``models/cnn.py`` ``ProductionCNN``) in PyTorch:
    ``ProductionCNN(features=(32, 64, 128), num_classes=10)`` with batch norm and residual blocks
    (the registry's defaults), 2x2 average pooling between stages, global average pooling,
    dropout 0.1 and a linear head; attribute names as ours, so ``import_weights.torch_key`` names
    its ``state_dict`` keys. Inputs (B, 3, H, W) float32, outputs logits (B, K)."""
    return ProductionCNN


def randomize_batch_norm(module: Any, seed: int = 0) -> None:
    """Give every ``BatchNorm2d`` of a torch ``module`` non-trivial affine parameters and running
    statistics (weight in [0.5, 1.5), bias and mean ~ N(0, 0.2^2), var in [0.5, 1.5)): fresh
    ones are 1/0 and would hide a swapped mean/var or scale/bias."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def state_dict_arrays(module: Any) -> dict[str, np.ndarray]:
    """A torch module's ``state_dict`` as NumPy arrays (what ``import_weights.convert_state_dict``
    takes)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
