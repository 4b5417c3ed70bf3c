"""The distortion classifier: CollabAR's CNN on the Fourier spectrum (Liu et al., IPSN 2020).

Input: one channel per spectrum in `config.spectra` (`core.spectrum`: CollabAR's luma spectrum,
and the chroma spectrum that tells a detailed clean frame from a noisy one); then
conv 32@3x3 stride 2 -> ReLU -> conv 16@3x3 -> ReLU -> maxpool 2 -> conv 1@1x1 -> ReLU ->
maxpool 2 -> dropout -> linear to the distortion classes. At 224 px the flattened map is 27x27 =
729, as in CollabAR; the input size is a parameter and the linear layer follows it. The reference
prototype's port had no ReLU; CollabAR's has, and so does this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from core.distortions import DISTORTION_CLASSES
from core.spectrum import LEGACY_SPECTRA, SPECTRA, check_spectra, classifier_input


@dataclass
class ClassifierConfig:
    input_size: int = 64  # side of the spectrum the network sees
    dropout: float = 0.5
    classes: tuple[str, ...] = DISTORTION_CLASSES
    image_size: int = 64  # side at which the training distortions were applied
    spectra: tuple[str, ...] = SPECTRA  # input channels, in order (core.spectrum)

    def __post_init__(self):
        self.spectra = check_spectra(self.spectra)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """The float32 CxSxS input of this classifier for an RGB uint8 image of any size."""
        return classifier_input(image, self.input_size, image_size=self.image_size, spectra=self.spectra)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["spectra"] = list(self.spectra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return cls(
            input_size=int(d["input_size"]),
            dropout=float(d["dropout"]),
            classes=tuple(d["classes"]),
            image_size=int(d.get("image_size", d["input_size"])),
            spectra=tuple(d.get("spectra", LEGACY_SPECTRA)),  # checkpoints from before chroma
        )


def _flat_side(size: int) -> int:
    side = (size - 3) // 2 + 1  # conv 3x3 stride 2, no padding
    side = side - 2  # conv 3x3, no padding
    side = side // 2  # maxpool 2
    return side // 2  # conv 1x1 keeps the size, maxpool 2


class DistortionClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        side = _flat_side(config.input_size)
        if side < 1:
            raise ValueError(f"input size {config.input_size} too small for the classifier")
        self.config = config
        self.features = nn.Sequential(
            nn.Conv2d(len(config.spectra), 32, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 1, 1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(side * side, len(config.classes))
        )
        # The single-channel 1x1 conv feeds everything through one ReLU: a positive bias keeps it
        # from starting dead (a dead unit collapses the classifier to one class).
        nn.init.constant_(self.features[5].bias, 0.1)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the 1-channel ReLU, to check that it is alive."""
        return self.features[:6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
