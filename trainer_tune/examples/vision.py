"""An image classifier: a small ResNet-style CNN with BatchNorm, and a map-style Dataset of images.

The source is a `Dataset`, so trainer_tune builds the DataLoader (a DistributedSampler, the trial's micro-batch
size, data.num_workers and friends) and the default DataLoader collation stacks each sample's
`(image [3, H, W], label)` into a batch `(images [B, 3, H, W], labels [B])`. A pair `(inputs, targets)` needs no
step function: the default step computes `cross_entropy(model(images), labels)`. Nothing is downloaded.

    model=resnet_small data=images        (configs/model/resnet_small.yaml, configs/data/images.yaml)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a skip connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    """A stem, one stage of residual blocks per entry of `channels` (each after the first halves the image),
    global average pooling and a linear classifier: images [B, 3, H, W] -> logits [B, num_classes].

        model._target_=trainer_tune.examples.vision.ResNet '+model.kwargs.channels=[16,32]'
    """

    def __init__(self, *, num_classes: int = 10, channels: tuple[int, ...] = (16, 32), blocks_per_stage: int = 1,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        stages = []
        width = channels[0]
        for index, out in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(ResidualBlock(width, out, stride=stride))
                width = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(images))
        return self.head(features.mean(dim=(2, 3)))


class RandomImages(Dataset):
    """`num_samples` images of `num_classes` classes: each class a fixed random pattern, each image its class's
    pattern plus noise, so a model can learn them (the loss falls) and no file is read. Sample i is the same in
    every trial and on every rank (the DistributedSampler gives each rank its own indices).

    Takes `seed` from trainer_tune (data.seed) and the rest from data.kwargs; a source may ignore the other
    runtime arguments (micro_batch_size, rank, ...), as this one does.
    """

    def __init__(self, *, seed: int, num_samples: int = 1024, num_classes: int = 10, image_size: int = 32,
                 noise: float = 0.5) -> None:
        self.seed = seed
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.noise = noise
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(num_classes, 3, image_size, image_size, generator=generator)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} of {self.num_samples}")
        # Made on demand, as a decoding dataset would: the work happens in the DataLoader (or its workers).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(self.num_classes, (), generator=generator))
        image = self.patterns[label] + self.noise * torch.randn(self.patterns.shape[1:], generator=generator)
        return image, label
