"""Checkpoint I/O: a dict of weights and metadata, written atomically, with a model version.

Format (``torch.save``)::

    {model: state_dict, arch, width, num_classes, classes, image_size, version,
     parent_version, created_at, metrics, config, normalization: {mean, std, weights}}

``normalization`` is the input normalisation the model expects (``models/pretrained.py``: an
ImageNet-pretrained model's weights' mean and std; absent in older files = the pipeline's).

A bare ``state_dict`` trained elsewhere is accepted too (arch and classes then come from the
caller), including keys prefixed ``module.`` by DataParallel / DistributedDataParallel.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustar_ls.errors import RobustarError
from robustar_ls.files import atomic_write_bytes
from robustar_ls.models.history import append_entry, history_entry
from robustar_ls.models.pretrained import InputNormalization, normalization_of, set_normalization
from robustar_ls.models.zoo import UnknownArchError, create_classifier

log = logging.getLogger(__name__)


class CheckpointError(RobustarError, ValueError):
    """A checkpoint cannot be used; the message names the file and what to fix."""


@dataclass
class Checkpoint:
    """A loaded classifier with the metadata that made it."""

    model: nn.Module
    arch: str
    classes: list[str]
    image_size: int
    version: str
    width: int = 16
    parent_version: str | None = None
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def normalization(self) -> InputNormalization:
        """The input normalisation the model expects (and applies, ``models/pretrained.py``)."""
        return normalization_of(self.model)


def weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the weights (names, shapes and bytes), stable across save/load."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def next_version(state_dict: Mapping[str, torch.Tensor], parent_version: str | None) -> str:
    """``v<counter>-<hash8>``: the counter grows from the parent, the hash names the weights."""
    counter = 0
    if parent_version:
        match = re.match(r"v(\d+)-", parent_version)
        counter = int(match.group(1)) if match else 0
    return f"v{counter + 1}-{weights_hash(state_dict)[:8]}"


@dataclass(frozen=True)
class Provenance:
    """How a checkpoint's weights came about, kept in the file and its history line: the version
    it was trained from (``None``: from nothing), what it measured, the settings it ran with;
    ``history``: fields of its history line only (e.g. ``sync``, ``seconds``)."""

    parent_version: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    history: Mapping[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    classes: Sequence[str],
    image_size: int,
    width: int = 16,
    provenance: Provenance | None = None,
) -> str:
    """Write a checkpoint atomically and return its new model version.

    The file is written to a temporary file in the same folder, fsynced, then ``os.replace``d
    over ``path``: a crash at any moment leaves either the old file or the new one, never a
    broken one. Then one line is appended to its history file (``models/history.py``), with
    ``provenance.history``'s fields added; a history that cannot be written is logged, the
    checkpoint stays.
    """
    provenance = provenance or Provenance()
    model = getattr(model, "module", model)  # unwrap DDP / DataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    version = next_version(state, provenance.parent_version)
    payload = {
        "model": state,
        "arch": arch,
        "width": width,
        "num_classes": len(classes),
        "classes": list(classes),
        "image_size": image_size,
        "version": version,
        "parent_version": provenance.parent_version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": dict(provenance.metrics),
        "config": dict(provenance.config),
        "normalization": normalization_of(model).to_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    meta = {key: value for key, value in payload.items() if key != "model"}
    try:
        append_entry(path, history_entry(meta, provenance.history))
    except OSError as err:
        log.error("checkpoint %s written, but not its history line: %s", path, err)
    return version


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `robustar-ls train`"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file?): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    width: int | None = None,
) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`, or a bare ``state_dict``.

    For a bare state_dict, ``arch`` and ``classes`` must be given. For a full checkpoint they are
    optional and, when given, must agree with the file (a clear error otherwise).
    """
    path = Path(path)
    meta, state = _meta_and_state(_read(path), path)
    file_arch, file_classes = meta.get("arch"), meta.get("classes")
    if arch and file_arch and arch != file_arch:
        raise CheckpointError(f"{path} was trained as {file_arch!r}, not {arch!r}; fix --arch")
    if classes is not None and file_classes is not None and list(classes) != list(file_classes):
        raise CheckpointError(
            f"{path} has classes {file_classes}, the dataset has {list(classes)}; "
            "use a checkpoint trained on this dataset's classes"
        )
    arch = file_arch or arch
    classes = list(file_classes or classes or [])
    if not arch or not classes:
        raise CheckpointError(
            f"{path} is a bare state_dict: give the architecture (--arch) and the dataset "
            "(its class folders) so the model can be rebuilt"
        )
    width = int(meta.get("width", width or 16))
    try:
        model = create_classifier(arch, len(classes), width=width)
    except UnknownArchError as err:
        raise CheckpointError(f"{path}: {err}") from err
    _load_weights(model, state, path, arch, len(classes))
    set_normalization(model, InputNormalization.from_dict(meta.get("normalization")))
    model.eval()
    version = meta.get("version") or f"v0-{weights_hash(state)[:8]}"
    return Checkpoint(
        model=model,
        arch=arch,
        classes=classes,
        image_size=int(meta.get("image_size") or image_size or 32),
        version=version,
        width=width,
        parent_version=meta.get("parent_version"),
        created_at=meta.get("created_at", ""),
        metrics=dict(meta.get("metrics") or {}),
        config=dict(meta.get("config") or {}),
    )


def _meta_and_state(raw: Any, path: Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """A full checkpoint's metadata and weights, or ``({}, weights)`` for a bare state_dict."""
    if isinstance(raw, Mapping) and "model" in raw and _is_state_dict(raw["model"]):
        return raw, _strip_module_prefix(raw["model"])
    if _is_state_dict(raw):
        return {}, _strip_module_prefix(raw)
    raise CheckpointError(
        f"{path} holds neither a robustar-ls checkpoint nor a state_dict "
        f"(found {type(raw).__name__}); save the model's state_dict() with torch.save"
    )


def _load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str, n: int
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match architecture {arch!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
            "pass the --arch it was trained with"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            hint = (
                f"it has a different number of classes than the {n} given"
                if expected[name].shape[0] == n and tensor.shape[:1] != expected[name].shape[:1]
                else "a different width or variant"
            )
            raise CheckpointError(
                f"{path}: weight {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)} ({hint}); check the classes and --arch"
            )
    model.load_state_dict(state)


def read_version(path: str | Path) -> str:
    """The model version of a checkpoint file, without building the model."""
    path = Path(path)
    raw = _read(path)
    if isinstance(raw, Mapping) and raw.get("version"):
        return str(raw["version"])
    state = raw.get("model", raw) if isinstance(raw, Mapping) else None
    if not _is_state_dict(state):
        raise CheckpointError(f"{path} holds no model weights")
    return f"v0-{weights_hash(_strip_module_prefix(state))[:8]}"
