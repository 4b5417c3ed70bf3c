"""The distortion classifier: CollabAR's CNN on the Fourier spectrum (Liu et al., IPSN 2020).

Input: one channel per spectrum in `config.spectra` (`core.spectrum`: CollabAR's luma spectrum,
the chroma spectrum that tells a detailed clean frame from a noisy one, and two that show which
way a blur runs); then
conv 32@3x3 stride 2 -> ReLU -> conv 16@3x3 -> ReLU -> maxpool 2 -> conv B@1x1 -> ReLU ->
maxpool 2 -> dropout -> linear to the distortion classes. At 224 px and B = 1 (CollabAR's
bottleneck) the flattened map is 27x27 = 729, as in CollabAR; the input size and the bottleneck's
width B are parameters and the linear layer follows them. The reference prototype's port had no
ReLU; CollabAR's has, and so does this one.

Optionally (`hidden` > 0) a hidden layer beside that linear read-out: flatten -> dropout -> linear
to H units -> ReLU -> linear to the classes, its logits added to the read-out's. The linear
read-out can only add evidence band by band; telling a motion blur at a random angle from a
Gaussian blur takes "one direction darkened, the one at right angles not", whichever direction
that is, which a sum over bands cannot express (docs/adding-a-distortion.md).

Why a wider bottleneck can be needed. Each position of the bottleneck map is one frequency band,
and the linear layer adds the bands up. With one channel per band the network can only add
evidence; a frame that arrives as JPEG needs it to weigh luma differently once the encoder has
removed the colour noise (which it can see: block-grid peaks in the luma spectrum, an empty outer
band in the chroma one), and a few channels per band let it (README, "Distortion classifier").
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from core.distortions import DISTORTION_CLASSES
from core.errors import UserInputError
from core.spectrum import DEFAULT_SPECTRA, LEGACY_SPECTRA, check_spectra, classifier_input
from training.checkpoints import load_checkpoint


@dataclass
class ClassifierConfig:
    input_size: int = 64  # side of the spectrum the network sees
    dropout: float = 0.5
    classes: tuple[str, ...] = DISTORTION_CLASSES
    image_size: int = 64  # side at which the training distortions were applied
    spectra: tuple[str, ...] = DEFAULT_SPECTRA  # input channels, in order (core.spectrum)
    bottleneck: int = 1  # channels of the 1x1 conv (CollabAR: 1)
    hidden: int = 0  # units of a hidden layer beside the linear read-out (0: none, CollabAR's)

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
            bottleneck=int(d.get("bottleneck", 1)),  # checkpoints from before it was a parameter
            hidden=int(d.get("hidden", 0)),  # checkpoints from before it was a parameter
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
        if config.bottleneck < 1:
            raise ValueError(f"bottleneck width must be at least 1, got {config.bottleneck}")
        if config.hidden < 0:
            raise ValueError(f"hidden units must be 0 or more, got {config.hidden}")
        self.config = config
        self.features = nn.Sequential(
            nn.Conv2d(len(config.spectra), 32, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, config.bottleneck, 1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(config.bottleneck * side * side, len(config.classes)),
        )
        # The narrow 1x1 conv feeds everything through a few ReLUs: a positive bias keeps them
        # from starting dead (a dead bottleneck collapses the classifier to one class).
        nn.init.constant_(self.features[5].bias, 0.1)
        # The hidden layer's logits are added to the linear read-out's; its output layer starts
        # at zero, so a network grown from a linear one answers as before until trained.
        self.mixer = None
        if config.hidden > 0:
            self.mixer = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(config.dropout),
                nn.Linear(config.bottleneck * side * side, config.hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.hidden, len(config.classes)),
            )
            nn.init.zeros_(self.mixer[-1].weight)
            nn.init.zeros_(self.mixer[-1].bias)

    def with_logit_offsets(self, offsets) -> DistortionClassifier:
        """A copy whose output layer adds `offsets` (one per class) to the logits: the network with
        its doubt settled as `training.route_bias` chose, in the form the ONNX export carries."""
        biased = copy.deepcopy(self)
        with torch.no_grad():
            biased.head[-1].bias += torch.as_tensor(offsets, dtype=biased.head[-1].bias.dtype)
        return biased

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the bottleneck's ReLU, to check that it is alive."""
        return self.features[:6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = self.features(x)
        logits = self.head(bands)
        return logits if self.mixer is None else logits + self.mixer(bands)


def initial_state(path: str | None, config: ClassifierConfig) -> tuple[dict, str] | None:
    """(state dict, run id) of the checkpoint at `path` (`train_classifier --init`), refused
    unless its network matches `config`; its classes and its spectra may be a prefix of `config`'s,
    and a network without a hidden layer may grow one (`widened`)."""
    if path is None:
        return None
    payload = load_checkpoint(path, "distortion_classifier")
    theirs = ClassifierConfig.from_dict(payload["config"])
    for field in ("input_size", "image_size", "bottleneck"):
        if getattr(theirs, field) != getattr(config, field):
            raise UserInputError(
                f"--init {path}: its {field} is {getattr(theirs, field)}, "
                f"this run's is {getattr(config, field)}"
            )
    if theirs.hidden not in (0, config.hidden):
        raise UserInputError(
            f"--init {path}: its hidden layer has {theirs.hidden} units, this run's {config.hidden}"
        )
    if config.spectra[: len(theirs.spectra)] != theirs.spectra:
        raise UserInputError(
            f"--init {path}: its spectra {', '.join(theirs.spectra)} do not begin --spectra "
            f"{', '.join(config.spectra)} (spectra may only be added at the end)"
        )
    if config.classes[: len(theirs.classes)] != theirs.classes:
        raise UserInputError(
            f"--init {path}: its classes {', '.join(theirs.classes)} do not begin --classes "
            f"{', '.join(config.classes)} (types may only be added at the end)"
        )
    return payload["state_dict"], payload["run_id"]


def widened(init: dict, fresh: dict) -> dict:
    """`init`, grown to `fresh`'s classes and input channels. The output layer: the rows of the
    classes it knew keep their trained weights, the added rows keep `fresh`'s initialisation. The
    first convolution: the channels it knew keep their weights, an added spectrum's start at zero,
    so the grown network answers as the old one did until training teaches it the new input. A
    hidden layer `init` lacks keeps `fresh`'s initialisation (its output starts at zero)."""
    out = dict(init)
    for key, new in fresh.items():
        if key not in init:  # a hidden layer added
            out[key] = new
            continue
        old = init[key]
        if old.shape == new.shape:
            continue
        if new.dim() == 4:  # the first convolution: more input channels
            grown = torch.zeros_like(new)
            grown[:, : old.shape[1]] = old
        else:  # the output layer's weight and bias: more rows
            grown = new.clone()
            grown[: old.shape[0]] = old
        out[key] = grown
    return out
