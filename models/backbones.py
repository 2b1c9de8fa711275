"""The ResNet trunk the image families share: torchvision's blocks, any width, two stems, last stride.

:class:`ResNetTrunk` stacks torchvision's ``BasicBlock`` / ``Bottleneck`` as ResNet-18/34/50 do,
under torchvision's own module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so at width 64
with the ImageNet stem its state dict *is* torchvision's ``resnet{depth}`` without ``fc``:
:func:`load_pretrained` loads torchvision's ImageNet weights (``"imagenet"``, fetched by torchvision
on first use) or a state-dict file into it. Knobs beside the standard network:

- ``width``: channels of the first stage, doubled per stage (64 is the standard network); smaller
  widths make CPU-sized variants (random init only: pretrained weights exist at 64);
- ``stem="small"``: one 3×3 stride-1 convolution and no max-pool, for 32×32-class images, so the
  stages keep the resolution (CIFAR practice); ``"small_s2"``: the same at stride 2 (64×32 re-ID
  crops on a CPU); ``"imagenet"``: 7×7 stride 2 and a max-pool (stride 4);
- ``last_stride=1``: the re-ID "bag of tricks" trick, doubling the last stage's resolution;
- ``n_stages``: stop after 1-4 stages (feature maps at an earlier, finer level).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from harness.errors import HarnessError

__all__ = ["DEPTHS", "STEMS", "ResNetTrunk", "load_pretrained"]

# depth -> (block, blocks per stage), as in torchvision's resnet18 / resnet34 / resnet50
DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}
STEMS = ("small", "small_s2", "imagenet")  # stride 1, 2 and 4


class ResNetTrunk(nn.Module):
    """Images ``[B, C, H, W]`` → the last stage's feature map ``[B, out_channels, H/stride, W/stride]``."""

    def __init__(self, depth: int = 18, width: int = 64, in_channels: int = 3, stem: str = "small",
                 last_stride: int = 2, n_stages: int = 4):  # fmt: skip
        super().__init__()
        if depth not in DEPTHS:
            raise HarnessError(f"model.depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}.")
        if stem not in STEMS:
            raise HarnessError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}.")
        if last_stride not in (1, 2) or n_stages not in (1, 2, 3, 4):
            raise HarnessError(f"last_stride must be 1 or 2 and n_stages 1-4, got {last_stride!r} and {n_stages!r}.")
        block, layers = DEPTHS[depth]
        if stem in ("small", "small_s2"):
            stem_stride = 1 if stem == "small" else 2
            self.conv1, self.maxpool = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.Identity()
        else:
            self.conv1, self.maxpool = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        channels, self.stride = width, {"small": 1, "small_s2": 2, "imagenet": 4}[stem]
        for index, n_blocks in enumerate(layers[:n_stages]):
            planes = width * 2**index
            stride = 1 if index == 0 else (last_stride if index == 3 else 2)
            blocks = []
            for b in range(n_blocks):
                out = planes * block.expansion
                down = None
                if b == 0 and (stride != 1 or channels != out):
                    down = nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                blocks.append(block(channels, planes, stride if b == 0 else 1, down))
                channels = out
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.stride *= stride
        self.n_stages, self.out_channels = n_stages, channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for index in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return x


def load_pretrained(trunk: ResNetTrunk, source: str, depth: int) -> None:
    """Load ``"imagenet"`` (torchvision's weights of ``resnet{depth}``) or a state-dict file into ``trunk``.

    Keys of stages the trunk does not have and the classifier (``fc.*``) are ignored; any other
    mismatch (another width, stem or depth) is an error naming the source.
    """
    if source == "imagenet":
        from torchvision.models import get_model_weights

        try:
            state = get_model_weights(f"resnet{depth}").DEFAULT.get_state_dict(progress=False)
        except Exception as exc:  # no network, no cache: say so in one line
            raise HarnessError(f"model.pretrained 'imagenet': torchvision could not load resnet{depth}'s weights "
                               f"({' '.join(str(exc).split())[:160]}).") from None  # fmt: skip
    else:
        if not Path(source).is_file():
            raise HarnessError(f"model.pretrained {source!r} is neither 'imagenet' nor a file.")
        state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    own = set(trunk.state_dict())
    kept = {k: v for k, v in state.items() if k in own}
    missing = own - set(kept)
    try:
        if missing:
            raise RuntimeError(f"missing keys {sorted(missing)[:3]}")
        trunk.load_state_dict(kept)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise HarnessError(f"model.pretrained {source!r} does not fit this backbone: {reason}") from None
