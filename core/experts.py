"""The expert registry: one rule for expert and archive names, and experts found by their manifests.

An expert `<name>` is served as two archives, `edge_<name>` (stages 0-2 and the side branches) and
`cloud_<name>` (the rest), optionally `full_<name>` (every stage in one archive, the cloud-only
baseline); the distortion classifier is `distortion_classifier`. Export, archive, the in-process
pipeline, the KServe predictor, the router's discovery and its register command all use this module,
so a name means the same thing everywhere.

Names are ASCII letters, digits, `_` and `-`, at most 64 characters: they become file names, URL path
segments, TorchServe model names and Prometheus label values, and a request names them too.

An archive or export file is filed by what its manifest says (role and expert name), never by
slicing its file name; the name is only checked to agree with the manifest, so a file renamed by
hand is refused instead of silently serving as another expert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from core.distortions import DISTORTION_CLASSES
from core.errors import UserInputError
from core.manifest import EXPORT_REPORT, Manifest, ManifestError, check_pair

CLASSIFIER = "distortion_classifier"
CONVENTIONAL = "conventional"  # the pristine-trained model, exported as an expert of its own
ARCHIVE_ROLES = ("edge", "cloud", "full")  # "full" holds an edge manifest and the cloud one beside it
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_expert_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_expert_name(name: object) -> str:
    """`name` if it follows the rule, else a UserInputError that states the rule."""
    if not is_expert_name(name):
        raise UserInputError(f"expert name {str(name)[:80]!r} is not 1-64 ASCII letters, digits, _ or -")
    return name


def archive_name(role: str, expert: str) -> str:
    """`edge_<expert>`, `cloud_<expert>` or `full_<expert>`."""
    if role not in ARCHIVE_ROLES:
        raise ValueError(f"no archive role {role!r}")
    return f"{role}_{check_expert_name(expert)}"


def parse_archive_name(model: str) -> tuple[str, str] | None:
    """(role, expert) of an archive name that follows the rule, else None (not one of ours)."""
    role, sep, expert = model.partition("_")
    if sep and role in ARCHIVE_ROLES and is_expert_name(expert):
        return role, expert
    return None


def standard_experts(distortions: tuple[str, ...] = DISTORTION_CLASSES) -> tuple[str, ...]:
    """The experts the training recipe makes: the conventional model and one per distortion class."""
    return (CONVENTIONAL, *distortions)


def check_archive(archive: str, manifest: Manifest) -> None:
    """Refuse an archive whose name does not say what its manifest says."""
    if manifest.role == "classifier":
        if archive != CLASSIFIER:
            raise ManifestError(f"{archive} carries a classifier manifest; the classifier is {CLASSIFIER}")
        return
    parsed = parse_archive_name(archive)
    if parsed is None:
        raise ManifestError(f"{archive} is not an archive name (edge_, cloud_ or full_ and an expert name)")
    role, expert = parsed
    wanted_role = "edge" if role == "full" else role
    if manifest.role != wanted_role or manifest.name != expert:
        raise ManifestError(
            f"{archive} carries the {manifest.role} manifest of expert {manifest.name!r}, "
            f"not the {wanted_role} manifest of {expert!r}"
        )


@dataclass
class Registry:
    """What a folder of manifests (an export, or unpacked archives) holds, filed by manifest."""

    classifier: tuple[Manifest, Path] | None = None
    edge: dict[str, tuple[Manifest, Path]] = field(default_factory=dict)
    cloud: dict[str, tuple[Manifest, Path]] = field(default_factory=dict)
    full: dict[str, tuple[Manifest, Path]] = field(default_factory=dict)

    def add(self, archive: str, manifest: Manifest, folder: Path) -> None:
        check_archive(archive, manifest)
        if manifest.role == "classifier":
            self.classifier = (manifest, folder)
            return
        role, expert = parse_archive_name(archive)
        getattr(self, role)[expert] = (manifest, folder)

    def manifests(self) -> dict[str, tuple[Manifest, Path]]:
        """Archive name -> (manifest, folder), for everything held."""
        out = {CLASSIFIER: self.classifier} if self.classifier else {}
        for role in ARCHIVE_ROLES:
            out.update({archive_name(role, n): v for n, v in getattr(self, role).items()})
        return dict(sorted(out.items()))

    def pairs(self) -> dict[str, tuple[tuple[Manifest, Path], tuple[Manifest, Path]]]:
        """Expert -> (edge, cloud) for every expert with both halves, checked to pair."""
        out = {}
        for name in sorted(self.edge):
            if name not in self.cloud:
                raise UserInputError(f"edge_{name} has no cloud_{name} beside it")
            check_pair(self.edge[name][0], self.cloud[name][0])
            out[name] = (self.edge[name], self.cloud[name])
        return out


def from_export(folder: str | Path, *, verify: bool = False) -> Registry:
    """The manifests `python -m export` wrote into `folder` (each file beside them)."""
    folder = Path(folder)
    registry = Registry()
    for path in sorted(folder.glob("*.json")):
        if path.name == EXPORT_REPORT:
            continue
        manifest = Manifest.load(path)
        if verify:
            manifest.verify_files(folder)
        registry.add(path.stem, manifest, folder)
    return registry
