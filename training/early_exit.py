"""Early-exit MobileNetV2: torchvision's network split into four named stages with side branches.

Follows the GLOBECOM 2021 prototype (Pacheco et al.): three side branches where the cumulative
multiply-accumulates of `features` first reach 25 / 50 / 75 %, each a small head
(AdaptiveAvgPool2d(2) -> flatten -> Linear(C*4, classes)); the final exit is MobileNetV2's own
classifier. Unlike the prototype, no block is dropped where a branch is attached: the stages
together are exactly torchvision's `features`, so with the same weights the final exit equals
torchvision's output.

Stages (timm-style, each callable on its own so export writes one ONNX file per segment):

    stage 0: features[0 .. e1]      -> branch 0
    stage 1: features[e1+1 .. e2]   -> branch 1
    stage 2: features[e2+1 .. e3]   -> branch 2      (edge side ends here: the split tensor)
    stage 3: features[e3+1 .. 18]   -> final head    (cloud side)

    python -m training.early_exit --input-size 64     # prints boundaries, MAC fractions, shapes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

from core.cli import run_cli
from core.errors import UserInputError

NUM_EXITS = 4  # three side branches + the final classifier
# the exits' names as the manifests carry them (export); everything downstream reads the manifest
EXIT_NAMES = (*(f"branch{i}" for i in range(NUM_EXITS - 1)), "final")


@dataclass
class ExitConfig:
    """Architecture of the early-exit network; recorded in every checkpoint."""

    num_classes: int = 10
    input_size: int = 64
    width_mult: float = 1.0
    exit_fractions: tuple[float, ...] = (0.25, 0.50, 0.75)
    exit_after: tuple[int, ...] | None = None  # explicit block indices; overrides the fractions
    macs_size: int = 224  # input size at which MACs are counted for placement
    branch_pool: int = 2
    dropout: float = 0.2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_fractions"] = list(self.exit_fractions)
        d["exit_after"] = None if self.exit_after is None else list(self.exit_after)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ExitConfig:
        d = dict(d)
        d["exit_fractions"] = tuple(d["exit_fractions"])
        d["exit_after"] = None if d.get("exit_after") is None else tuple(d["exit_after"])
        return cls(**d)


def conv_macs_per_block(features: nn.Sequential, size: int) -> list[int]:
    """Multiply-accumulates of the convolutions of each `features` block at `size x size` input."""
    macs = [0] * len(features)
    hooks = []
    for i, block in enumerate(features):
        for module in block.modules():
            if isinstance(module, nn.Conv2d):

                def hook(mod, inputs, output, i=i):
                    k = mod.kernel_size[0] * mod.kernel_size[1]
                    macs[i] += output.numel() // output.shape[0] * (mod.in_channels // mod.groups) * k

                hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            features.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return macs


def place_exits(macs: list[int], fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Index of the first block at which the cumulative MAC fraction reaches each fraction."""
    if not all(0 < f < 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise UserInputError(f"exit fractions must be increasing and inside (0, 1), got {list(fractions)}")
    total = float(sum(macs))
    cumulative, out, acc = [], [], 0
    for m in macs:
        acc += m
        cumulative.append(acc / total)
    for f in fractions:
        out.append(next(i for i, c in enumerate(cumulative) if c >= f))
    if len(set(out)) != len(out) or out != sorted(out):
        raise UserInputError(f"exit fractions {fractions} put two branches after one block")
    return tuple(out)


def _torchvision_mobilenet(config: ExitConfig, pretrained: bool) -> nn.Module:
    if not pretrained:
        return torchvision.models.mobilenet_v2(
            num_classes=config.num_classes, width_mult=config.width_mult, dropout=config.dropout
        )
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    try:
        net = torchvision.models.mobilenet_v2(
            weights=weights, width_mult=config.width_mult, dropout=config.dropout
        )
    except Exception as exc:  # noqa: BLE001 - no network, proxy, corrupt cache: train from scratch
        print(
            f"warning: ImageNet weights unavailable ({type(exc).__name__}); "
            f"starting from random initialisation",
            file=sys.stderr,
        )
        return _torchvision_mobilenet(config, pretrained=False)
    net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, config.num_classes)
    return net


class BranchHead(nn.Sequential):
    """Side-branch exit: AdaptiveAvgPool2d(p) -> flatten -> Linear(C * p * p, classes)."""

    def __init__(self, channels: int, num_classes: int, pool: int = 2):
        super().__init__(
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(channels * pool * pool, num_classes)
        )


class FinalHead(nn.Module):
    """MobileNetV2's own exit: global average pool -> flatten -> classifier (dropout + linear)."""

    def __init__(self, classifier: nn.Sequential):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class EarlyExitMobileNetV2(nn.Module):
    """MobileNetV2 as four stages and four exit heads; `forward` returns the logits of every exit."""

    def __init__(self, config: ExitConfig, *, pretrained: bool = False):
        super().__init__()
        self.config = config
        net = _torchvision_mobilenet(config, pretrained)
        features = net.features
        if config.exit_after is not None:
            exits = tuple(config.exit_after)
            if (
                len(exits) != 3
                or list(exits) != sorted(set(exits))
                or exits[0] < 0
                or exits[-1] >= len(features) - 1
            ):
                raise UserInputError(
                    f"--exit-after needs 3 increasing block indices below "
                    f"{len(features) - 1}, got {list(exits)}"
                )
        else:
            exits = place_exits(conv_macs_per_block(features, config.macs_size), config.exit_fractions)
        self.exit_after = exits
        bounds = [0, *(e + 1 for e in exits), len(features)]
        # re-numbered from 0 inside each stage (slicing a Sequential keeps the original keys)
        self.stages = nn.ModuleList(
            nn.Sequential(*list(features)[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        )
        channels = [self._out_channels(features[e]) for e in exits]
        self.heads = nn.ModuleList(
            [
                *(BranchHead(c, config.num_classes, config.branch_pool) for c in channels),
                FinalHead(net.classifier),
            ]
        )

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.stages[index](x)

    def forward_head(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.heads[index](x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            logits.append(head(x))
        return logits

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision MobileNetV2 state dict (features.* and classifier.*) into the stages
        and the final head; the side branches keep their weights."""
        mapped, block = {}, 0
        for s, stage in enumerate(self.stages):
            for j in range(len(stage)):
                prefix = f"features.{block}."
                mapped.update(
                    {
                        f"stages.{s}.{j}.{k[len(prefix) :]}": v
                        for k, v in state.items()
                        if k.startswith(prefix)
                    }
                )
                block += 1
        mapped.update(
            {f"heads.{NUM_EXITS - 1}.{k}": v for k, v in state.items() if k.startswith("classifier.")}
        )
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        backbone_missing = [k for k in missing if not k.startswith(("heads.0", "heads.1", "heads.2"))]
        if backbone_missing or unexpected:
            raise UserInputError(
                f"not a matching MobileNetV2 state dict (missing {backbone_missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.stages.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.heads.parameters()


def describe(config: ExitConfig) -> list[dict]:
    """One row per stage: blocks, output shape at `input_size`, cumulative MAC fraction."""
    model = EarlyExitMobileNetV2(config).eval()
    macs = conv_macs_per_block(nn.Sequential(*[b for s in model.stages for b in s]), config.macs_size)
    total = float(sum(macs))
    rows, x, first = [], torch.zeros(1, 3, config.input_size, config.input_size), 0
    with torch.no_grad():
        for i, stage in enumerate(model.stages):
            x = stage(x)
            last = first + len(stage) - 1
            rows.append(
                {
                    "stage": i,
                    "blocks": f"features[{first}..{last}]",
                    "exit": "final" if i == NUM_EXITS - 1 else f"branch {i}",
                    "macs_fraction": sum(macs[: last + 1]) / total,
                    "shape": list(x.shape[1:]),
                }
            )
            first = last + 1
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Print the early-exit MobileNetV2's stage boundaries, "
        "each exit's MAC fraction and the tensor shapes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--exit-fractions", type=float, nargs=3, default=(0.25, 0.5, 0.75))
    p.add_argument("--exit-after", type=int, nargs=3, default=None)
    p.add_argument("--macs-size", type=int, default=224)
    return p


def main(args: argparse.Namespace) -> list[dict]:
    config = ExitConfig(
        num_classes=args.num_classes,
        input_size=args.input_size,
        width_mult=args.width_mult,
        exit_fractions=tuple(args.exit_fractions),
        exit_after=tuple(args.exit_after) if args.exit_after else None,
        macs_size=args.macs_size,
    )
    rows = describe(config)
    print(f"early-exit MobileNetV2, input {args.input_size} px, MACs counted at {args.macs_size} px")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"  stage {r['stage']}  {r['blocks']:<16} -> {r['exit']:<8} "
            f"cumulative MACs {100 * r['macs_fraction']:5.1f} %  tensor {shape}"
        )
    print(f"  split tensor (edge -> cloud): {'x'.join(map(str, rows[2]['shape']))}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
