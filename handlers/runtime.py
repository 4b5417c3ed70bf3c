"""Run exported segments with onnxruntime: the edge expert, the cloud expert, the classifier.

numpy + onnxruntime only (no torch): the TorchServe handlers, the in-process reference pipeline
and the benchmarks all use these classes, so the live servers and the reference decide exits with
the same code. Early exit in a batch is decided per sample with masks: only the samples that no
branch has answered yet run the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.exits import confidence_and_class, exit_here, softmax
from core.imaging import ImageWire, Preprocessing
from core.manifest import Manifest, ManifestError
from core.spectrum import classifier_input


def make_session(
    path: Path, *, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """A session with threads and providers stated explicitly (never onnxruntime's defaults)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


CPU = ("CPUExecutionProvider",)


class _Segments:
    role = ""

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        *,
        threads: int = 1,
        verify: bool = True,
        providers: tuple[str, ...] = CPU,
    ):
        if manifest.role != self.role:
            raise ManifestError(f"{manifest.name}: a {manifest.role} manifest, not {self.role}")
        if verify:
            manifest.verify_files(folder)
        self.manifest = manifest
        self.stages = [
            make_session(folder / f, threads=threads, providers=providers) for f in manifest.stages
        ]
        self.heads = [
            make_session(folder / e.file, threads=threads, providers=providers) for e in manifest.exits
        ]

    @staticmethod
    def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: x})[0]


@dataclass
class EdgeResult:
    """Per-sample outcome on the edge (arrays of length N)."""

    exit_index: np.ndarray  # branch that answered, or -1 when offloaded
    prediction: np.ndarray  # class of the answering branch (-1 when offloaded)
    confidence: np.ndarray  # its confidence (nan when offloaded)
    branch_confidence: np.ndarray  # N x side branches, nan for branches a sample never reached
    branch_prediction: np.ndarray  # N x side branches, -1 where not reached
    split: np.ndarray | None  # M x C x H x W for the M offloaded samples, in order
    offloaded: np.ndarray  # indices of the offloaded samples


class EdgeExpert(_Segments):
    """Stages 0-2 and the three side branches of one expert."""

    role = "edge"

    def __init__(self, manifest: Manifest, folder: Path, **options):
        super().__init__(manifest, folder, **options)
        self.preprocessing = Preprocessing.from_dict(manifest.preprocessing)
        self.temperatures = [e.temperature for e in manifest.exits]

    def run_batch(self, x: np.ndarray, p_tar: float | np.ndarray) -> EdgeResult:
        """Run N preprocessed images; per-sample thresholds allowed (array of length N)."""
        n = x.shape[0]
        p_tar = np.broadcast_to(np.asarray(p_tar, dtype=np.float64), (n,))
        exit_index = np.full(n, -1)
        prediction = np.full(n, -1)
        confidence = np.full(n, np.nan)
        branch_conf = np.full((n, len(self.heads)), np.nan)
        branch_pred = np.full((n, len(self.heads)), -1)
        active = np.arange(n)  # samples no branch has answered yet
        h = x
        for k, (stage, head) in enumerate(zip(self.stages, self.heads, strict=True)):
            h = self.run(stage, h)
            # the rule itself (temperature, inclusive threshold) lives in core.exits alone
            conf, pred, done = exit_here(self.run(head, h), self.temperatures[k], p_tar[active])
            branch_conf[active, k] = conf
            branch_pred[active, k] = pred
            exit_index[active[done]] = k
            prediction[active[done]] = pred[done]
            confidence[active[done]] = conf[done]
            active, h = active[~done], h[~done]
            if active.size == 0:
                break
        return EdgeResult(
            exit_index=exit_index,
            prediction=prediction,
            confidence=confidence,
            branch_confidence=branch_conf,
            branch_prediction=branch_pred,
            split=h if active.size else None,
            offloaded=active,
        )


class CloudExpert(_Segments):
    """Stage 3 and the final exit of one expert."""

    role = "cloud"

    def __init__(self, manifest: Manifest, folder: Path, **options):
        super().__init__(manifest, folder, **options)
        self.temperature = manifest.exits[0].temperature

    def logits(self, split: np.ndarray) -> np.ndarray:
        h = split
        for stage in self.stages:
            h = self.run(stage, h)
        return self.run(self.heads[0], h)

    def run_batch(self, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, class) of the final exit for each offloaded sample."""
        return confidence_and_class(self.logits(split), self.temperature)


class DistortionClassifierRuntime:
    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        *,
        threads: int = 1,
        verify: bool = True,
        providers: tuple[str, ...] = CPU,
    ):
        if manifest.role != "classifier":
            raise ManifestError(f"{manifest.name}: not a classifier manifest")
        if verify:
            manifest.verify_files(folder)
        self.manifest = manifest
        self.size = int(manifest.preprocessing["spectrum_size"])
        self.image_size = int(manifest.preprocessing["size"])
        self.spectra = manifest.spectra
        # one network, or one per body format (the JPEG one trained on what the encoder leaves)
        self.sessions = [
            make_session(folder / stage, threads=threads, providers=providers) for stage in manifest.stages
        ]
        for stage, session in zip(manifest.stages, self.sessions, strict=True):
            channels = session.get_inputs()[0].shape[1]
            if channels != len(self.spectra):  # refused at load, not on the first request
                raise ManifestError(
                    f"{manifest.name}: {stage} takes {channels} input channels, the manifest names "
                    f"{len(self.spectra)} spectra ({', '.join(self.spectra)})"
                )

    def probabilities(
        self, images: list[np.ndarray], wires: list[ImageWire | None] | None = None
    ) -> np.ndarray:
        """N x 3 distortion probabilities for RGB uint8 images of any size; `wires` names the wire
        each image's body came on (`ImageWire.of_body`; None or missing: unknown): its format picks
        the network, its JPEG quality the network's low-quality offsets (`Manifest.logit_offsets`)."""
        spec = {"image_size": self.image_size, "spectra": self.spectra}
        x = np.stack([classifier_input(im, self.size, **spec) for im in images]).astype(np.float32)
        wires = wires or [None] * len(images)
        stage = np.array([self.manifest.classifier_stage(w.format if w else None) for w in wires])
        logits = np.empty((len(images), len(self.manifest.class_names)), dtype=np.float32)
        for k in np.unique(stage):  # one run per network, over the images it answers
            session = self.sessions[k]
            logits[stage == k] = session.run(None, {session.get_inputs()[0].name: x[stage == k]})[0]
        for i, w in enumerate(wires):
            offsets = self.manifest.logit_offsets(w.format, w.quality) if w else None
            if offsets is not None:
                logits[i] += np.asarray(offsets, dtype=np.float32)
        return softmax(logits)

    def distortions(
        self, images: list[np.ndarray], wires: list[ImageWire | None] | None = None
    ) -> list[tuple[str, dict[str, float]]]:
        """(most likely distortion, class name -> probability) for each image (body wires as in
        `probabilities`): the classifier's answer as its TorchServe handler and the router give it."""
        names = self.manifest.class_names
        return [
            (names[int(p.argmax())], {n: float(v) for n, v in zip(names, p, strict=True)})
            for p in self.probabilities(images, wires)
        ]
