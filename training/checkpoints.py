"""Saving and loading checkpoints: plain tensors and JSON-able metadata, never arbitrary pickles.

Every checkpoint is a dict with `kind` ('distortion_classifier', ...), `config`, `state_dict`,
`run_id`, `created` and whatever the kind needs (class names, history, command). Loading uses
`torch.load(weights_only=True)`, so a checkpoint cannot run code, and a wrong or broken file gives
a one-line error.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from pathlib import Path

import torch

from core.errors import UserInputError


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def default_experts(backbone: str | Path) -> list[str]:
    """The expert checkpoints beside a backbone checkpoint (how models/torch lays them out)."""
    return sorted(str(p) for p in Path(backbone).parent.glob("expert_*.pt"))


def jpeg_classifier_path(classifier: str | Path, option: str | None) -> str | None:
    """The checkpoint of the classifier network for JPEG bodies: `option` as given ('none': no
    such network), or by default `classifier_jpeg.pt` beside the classifier when it exists."""
    if option is not None:
        return None if option == "none" else str(option)
    beside = Path(classifier).with_name("classifier_jpeg.pt")
    return str(beside) if beside.is_file() else None


def save_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name


def load_checkpoint(path: str | Path, kind: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(payload, dict) or "kind" not in payload:
        raise UserInputError(f"{path} is not a checkpoint of this project")
    if payload["kind"] != kind:
        raise UserInputError(f"{path} is a {payload['kind']} checkpoint, expected {kind}")
    return _restore_slim(payload, path, kind)


def slim_payload(expert: dict, backbone: dict, *, backbone_file: str) -> dict:
    """The expert payload with only the tensors that differ from `backbone`'s state dict.

    `expert` is a loaded (whole) payload, so slimming a slim checkpoint again gives the same file.
    """
    if expert.get("role") != "expert" or backbone.get("role") != "backbone":
        raise UserInputError("slimming needs an expert checkpoint and its backbone checkpoint")
    if expert["backbone_run_id"] != backbone["run_id"]:
        raise UserInputError("the expert was fine-tuned from another backbone run")
    base = backbone["state_dict"]
    delta = {
        k: v
        for k, v in expert["state_dict"].items()
        if k not in base or base[k].shape != v.shape or not torch.equal(base[k], v)
    }
    return {
        **expert,
        "state_dict": delta,
        "base_checkpoint": {"file": backbone_file, "run_id": backbone["run_id"]},
    }


def _restore_slim(payload: dict, path: Path, kind: str) -> dict:
    """A slim payload made whole again from the backbone checkpoint beside `path`."""
    base_ref = payload.get("base_checkpoint")
    if not base_ref:
        return payload
    name = base_ref.get("file", "")
    if Path(name).name != name or name == path.name:
        raise UserInputError(f"{path}: base checkpoint {name!r} is not another file beside it")
    base_path = path.parent / name
    base = load_checkpoint(base_path, kind)
    if base.get("role") != "backbone" or base["run_id"] != base_ref["run_id"]:
        raise UserInputError(
            f"{path} needs backbone run {base_ref['run_id']}, "
            f"{base_path} is {base.get('role')} run {base['run_id']}"
        )
    whole = {k: v for k, v in payload.items() if k != "base_checkpoint"}
    return {**whole, "state_dict": {**base["state_dict"], **payload["state_dict"]}}
