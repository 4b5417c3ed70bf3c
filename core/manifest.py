"""The manifest carried by every archive: what a segment set is and how to use it correctly.

JSON, versioned, validated on load (a handler or the router refuses a manifest that does not
parse, rather than serving with wrong preprocessing or temperatures). Roles:

- `edge`:  stages 0-2 and the three side branches of one expert; ends with the split tensor;
- `cloud`: stage 3 and the final exit of one expert; starts from the split tensor;
- `classifier`: the distortion classifier on the spectrum; one network, or one per image format of
  the request body (`preprocessing.formats`, aligned with `stages`: a JPEG body is answered by the
  network trained for what a JPEG encoder leaves of an image, see `Manifest.classifier_stage`), and
  per network a low-quality band whose logit offsets settle its doubt where the JPEG encoder left
  less evidence (`preprocessing.quality_offsets`, keyed like `formats`; `band_offsets`).

An edge and a cloud archive pair only when their `split` contract and `run_id` agree
(`check_pair`).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import operating_points
from core.errors import UserInputError
from core.spectrum import LEGACY_SPECTRA, check_spectra

SCHEMA_VERSION = 1
ROLES = ("edge", "cloud", "classifier")
DTYPES = ("FP32", "FP16", "INT8")
EXPORT_REPORT = "export_report.json"  # written beside the manifests by python -m export; not one
# The body formats a classifier network can be kept for ('any': every body without its own network;
# 'png' and 'jpeg' as core.imaging.image_format names them).
FORMAT_ANY = "any"
CLASSIFIER_FORMATS = (FORMAT_ANY, "png", "jpeg")


def network_for_format(formats: tuple[str, ...] | list[str], body_format: str | None) -> int:
    """Which of a classifier's networks, kept for `formats` in order, answers a body of
    `body_format` ('png', 'jpeg', or None when unknown): its own network if there is one, else the
    first. The one rule for serving (manifests) and evaluation (checkpoints) alike."""
    return list(formats).index(body_format) if body_format in formats else 0


def band_offsets(band: dict | None, quality: int | None) -> list[float] | None:
    """The logit offsets (one per class) a classifier network adds for a JPEG body encoded at
    `quality`, or None. `band` is the network's low-quality band, {"below": Q, "offsets": [...]}:
    a JPEG encoded below quality Q keeps less of weak noise, so the network's doubt there is
    settled differently (`training.route_bias` fits both bands on validation data). No band, an
    unknown quality (a PNG body, an unreadable table) or one at Q or above gets no offsets. The one
    rule for serving (manifests) and evaluation (checkpoints) alike."""
    if band is None or quality is None or quality >= band["below"]:
        return None
    return band["offsets"]


def check_quality_offsets(quality_offsets: object, formats: list[str], n_classes: int) -> None:
    """ValueError unless `quality_offsets` is a {format: {"below": 2..100, "offsets": [n finite
    numbers]}} over the formats of the manifest's networks."""
    if not isinstance(quality_offsets, dict):
        raise ValueError(f"quality_offsets must be an object, got {quality_offsets!r}")
    for fmt, band in quality_offsets.items():
        if fmt not in formats:
            raise ValueError(f"quality_offsets names {fmt!r}, which no network is kept for ({formats})")
        below = band.get("below") if isinstance(band, dict) else None
        offsets = band.get("offsets") if isinstance(band, dict) else None
        if (
            not isinstance(band, dict)
            or set(band) != {"below", "offsets"}
            or not (isinstance(below, int) and not isinstance(below, bool) and 2 <= below <= 100)
            or not isinstance(offsets, list)
            or len(offsets) != n_classes
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in offsets
            )
        ):
            raise ValueError(
                f"quality_offsets[{fmt!r}] must be {{'below': 2..100, 'offsets': "
                f"{n_classes} finite numbers}}, got {band!r}"
            )


class ManifestError(UserInputError):
    """A manifest that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None for the dynamic batch axis
    dtype: str = "FP32"


@dataclass(frozen=True)
class ExitSpec:
    index: int
    name: str  # branch0, branch1, branch2, final
    file: str  # ONNX file of the head
    temperature: float
    threshold: float  # default p_tar


@dataclass(frozen=True)
class Manifest:
    role: str
    name: str  # expert name or "distortion_classifier"
    distortion: str | None
    class_names: tuple[str, ...]
    preprocessing: dict
    stages: tuple[str, ...]  # ONNX files of the backbone segments, in order
    exits: tuple[ExitSpec, ...]
    input: TensorSpec
    output: TensorSpec  # edge: the split tensor; others: logits
    backbone_hash: str
    run_id: str
    files: dict = field(default_factory=dict)  # file name -> sha256
    exporter: dict = field(default_factory=dict)
    # edge only: accuracy against the exit threshold on the validation split (core.operating_points);
    # empty for an export made before the tables existed (the router then serves fixed thresholds)
    operating_points: dict = field(default_factory=dict)
    # classifier only: class -> the class whose expert answers when its own is not registered
    # (`core.distortions.Distortion.fallback`, written at export; the router follows it)
    fallbacks: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        if not d["fallbacks"]:  # only a classifier of types with a fallback carries them
            del d["fallbacks"]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        try:
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(f"manifest schema {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
            m = cls(
                role=str(d["role"]),
                name=str(d["name"]),
                distortion=None if d["distortion"] is None else str(d["distortion"]),
                class_names=tuple(str(c) for c in d["class_names"]),
                preprocessing={
                    "size": int(d["preprocessing"]["size"]),
                    "mean": [float(v) for v in d["preprocessing"]["mean"]],
                    "std": [float(v) for v in d["preprocessing"]["std"]],
                    **{k: v for k, v in d["preprocessing"].items() if k not in ("size", "mean", "std")},
                },
                stages=tuple(str(s) for s in d["stages"]),
                exits=tuple(
                    ExitSpec(
                        index=int(e["index"]),
                        name=str(e["name"]),
                        file=str(e["file"]),
                        temperature=float(e["temperature"]),
                        threshold=float(e["threshold"]),
                    )
                    for e in d["exits"]
                ),
                input=_tensor(d["input"]),
                output=_tensor(d["output"]),
                backbone_hash=str(d["backbone_hash"]),
                run_id=str(d["run_id"]),
                files={str(k): str(v) for k, v in d.get("files", {}).items()},
                exporter=dict(d.get("exporter", {})),
                operating_points=dict(d.get("operating_points") or {}),
                fallbacks=dict(d.get("fallbacks") or {}),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"malformed manifest ({type(exc).__name__}: {exc})") from None
        m.validate()
        return m

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ManifestError(f"manifest {path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest {path} is not readable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {path} is not a JSON object")
        return cls.from_dict(data)

    @property
    def spectra(self) -> tuple[str, ...]:
        """A classifier's input channels; a manifest from before the chroma spectrum names none
        and means CollabAR's luma spectrum alone."""
        return check_spectra(self.preprocessing.get("spectra", list(LEGACY_SPECTRA)))

    @property
    def classifier_formats(self) -> tuple[str, ...]:
        """The image format each of a classifier's networks answers, aligned with `stages`; a
        manifest that names none has one network for every body."""
        return tuple(self.preprocessing.get("formats", [FORMAT_ANY]))

    def classifier_stage(self, body_format: str | None) -> int:
        """Index into `stages` of the network that answers a body of `body_format`."""
        return network_for_format(self.classifier_formats, body_format)

    def logit_offsets(self, body_format: str | None, quality: int | None) -> list[float] | None:
        """Offsets the network answering such a body adds to its logits (`band_offsets`)."""
        network = self.classifier_formats[self.classifier_stage(body_format)]
        return band_offsets(self.preprocessing.get("quality_offsets", {}).get(network), quality)

    def validate(self) -> None:
        if self.role not in ROLES:
            raise ManifestError(f"unknown manifest role {self.role!r}")
        if not self.class_names:
            raise ManifestError("manifest lists no class names")
        for spec in (self.input, self.output):
            if spec.dtype not in DTYPES:
                raise ManifestError(f"unknown dtype {spec.dtype!r} for {spec.name}")
        for e in self.exits:
            if not (e.temperature > 0 and 0 < e.threshold <= 1):
                raise ManifestError(f"exit {e.name}: temperature must be > 0 and threshold in (0, 1]")
        expected = {"edge": 3, "cloud": 1, "classifier": 0}[self.role]
        if self.role != "classifier" and len(self.exits) != expected:
            raise ManifestError(f"a {self.role} manifest has {expected} exits, not {len(self.exits)}")
        for name in (*self.stages, *(e.file for e in self.exits), *self.files):
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts or not parts:
                raise ManifestError(f"file name {name!r} leaves the archive folder")
        for name in (*self.stages, *(e.file for e in self.exits)):
            if name not in self.files:
                raise ManifestError(f"file {name} is not listed with its hash")
        if self.role == "classifier":
            try:
                spectra = self.spectra
            except ValueError as exc:
                raise ManifestError(f"{self.name}: preprocessing: {exc}") from None
            formats = self.preprocessing.get("formats", [FORMAT_ANY])
            if (
                not isinstance(formats, list)
                or len(formats) != len(self.stages)
                or len(set(formats)) != len(formats)
                or not set(formats) <= set(CLASSIFIER_FORMATS)
            ):
                raise ManifestError(
                    f"{self.name}: preprocessing.formats must name one distinct format of "
                    f"{', '.join(CLASSIFIER_FORMATS)} per network ({len(self.stages)}), got {formats!r}"
                )
            try:
                check_quality_offsets(
                    self.preprocessing.get("quality_offsets", {}), formats, len(self.class_names)
                )
            except ValueError as exc:
                raise ManifestError(f"{self.name}: preprocessing.{exc}") from None
            if len(self.input.shape) != 4 or self.input.shape[1] != len(spectra):
                raise ManifestError(
                    f"{self.name}: input shape {list(self.input.shape)} does not hold one channel per "
                    f"spectrum of {list(spectra)}"
                )
        if self.fallbacks:
            if self.role != "classifier":
                raise ManifestError(f"a {self.role} manifest carries no fallbacks")
            for name, to in self.fallbacks.items():
                if name not in self.class_names or to not in self.class_names or name == to:
                    raise ManifestError(
                        f"{self.name}: fallbacks must map a class to another class of "
                        f"{list(self.class_names)}, got {name!r} -> {to!r}"
                    )
        if self.operating_points:
            if self.role != "edge":
                raise ManifestError(f"a {self.role} manifest carries no operating points")
            try:
                operating_points.validate(self.operating_points, len(self.exits))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                raise ManifestError(f"{self.name}: {exc}") from None

    def verify_files(self, folder: str | Path) -> None:
        """Check that every listed file exists in `folder` with the recorded SHA-256."""
        for name, digest in self.files.items():
            path = Path(folder) / name
            if not path.is_file():
                raise ManifestError(f"{name} listed in the manifest is missing")
            if sha256_file(path) != digest:
                raise ManifestError(f"{name} does not match its manifest hash")


def _tensor(d: dict) -> TensorSpec:
    return TensorSpec(
        name=str(d["name"]),
        shape=tuple(None if v is None else int(v) for v in d["shape"]),
        dtype=str(d.get("dtype", "FP32")),
    )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_pair(edge: Manifest, cloud: Manifest) -> None:
    """Refuse an edge/cloud pair whose split contract, run or classes differ."""
    if edge.role != "edge" or cloud.role != "cloud":
        raise ManifestError(f"expected an edge and a cloud manifest, got {edge.role} and {cloud.role}")
    if edge.output != cloud.input:
        raise ManifestError(f"split contract differs: edge sends {edge.output}, cloud expects {cloud.input}")
    if edge.run_id != cloud.run_id:
        raise ManifestError(f"run ids differ: edge {edge.run_id}, cloud {cloud.run_id}")
    if edge.class_names != cloud.class_names:
        raise ManifestError("edge and cloud were trained on different classes")


def export_file_hashes(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every model file of an export folder, as its manifests record them.

    Every file is checked against its manifest first, so a result that names these hashes names
    the files it really used.
    """
    folder = Path(folder)
    hashes: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == EXPORT_REPORT:
            continue
        manifest = Manifest.load(path)
        manifest.verify_files(folder)
        hashes.update(manifest.files)
    if not hashes:
        raise ManifestError(f"{folder} holds no manifest: run python -m export")
    return dict(sorted(hashes.items()))


def archive_file_hashes(store: str | Path) -> dict[str, str]:
    """SHA-256 of every model file inside a model store's archives, checked against their manifests.

    The same names and values as `export_file_hashes` of the export the archives were built from.
    """
    hashes: dict[str, str] = {}
    for mar in sorted(Path(store).glob("*.mar")):
        try:
            with zipfile.ZipFile(mar) as archive:
                members = set(archive.namelist())
                for name in sorted(members):
                    if "/" in name or not name.endswith("manifest.json"):
                        continue
                    manifest = Manifest.from_dict(json.loads(archive.read(name)))
                    for file, digest in manifest.files.items():
                        if file not in members or hashlib.sha256(archive.read(file)).hexdigest() != digest:
                            raise ManifestError(f"{mar.name}: {file} does not match its manifest hash")
                    hashes.update(manifest.files)
        except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise ManifestError(f"{mar} is not a readable archive ({exc})") from None
    if not hashes:
        raise ManifestError(f"{store} holds no archive: run python -m export.archive")
    return dict(sorted(hashes.items()))


def artifacts_entry(models: str | Path | None, checkpoints: list[str | Path] = ()) -> dict:
    """The `artifacts` entry of a result file: the model files (and checkpoints) it was made with.

    `models` is an export folder (manifests beside the files) or a model store of archives.
    """
    entry: dict = {}
    if models is not None:
        entry["models"] = str(models)
        is_store = any(Path(models).glob("*.mar")) and not any(Path(models).glob("*.json"))
        entry["sha256"] = archive_file_hashes(models) if is_store else export_file_hashes(models)
    if checkpoints:
        entry["checkpoints"] = {str(p): sha256_file(p) for p in checkpoints}
    return entry
