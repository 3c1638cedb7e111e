"""ImageNet-pretrained backbones (``train --pretrained``): torchvision's weights files, fetched
the torch.hub way, and the input normalisation they were trained with.

The file is torchvision's own (``weights.url``, e.g. ``resnet18-f37072fd.pth``), kept where
torch.hub keeps it (``$TORCH_HOME/hub/checkpoints``, :func:`weights_file`), so a file torchvision
already downloaded is used as it is. :func:`fetch_pretrained` downloads it there once, like
the Mask R-CNN weights of ``serve`` (:func:`weights_download.fetch_once`: SHA-256 prefix of the
file name checked, progress in the log, one download per machine), unless offline;
:func:`load_pretrained` reads it from there and never downloads. Every failure is one
:class:`PretrainedUnavailable` line naming the file, where it goes and the URL to fetch.

Input normalisation: the data pipeline normalises with ImageNet's mean and std
(``data/tensors.normalize``). A model carries the normalisation its weights expect
(:class:`InputNormalization`, saved in the checkpoint as ``normalization`` and restored on
load); where it differs from the pipeline's, a forward pre-hook converts the model's input
(:func:`set_normalization`), so serve, eval, influence and paired training, which all get the
model from its checkpoint, feed it what its weights were trained on. (torchvision's ImageNet
weights of the zoo's architectures all use the pipeline's mean and std.) The image size is the
weights' crop size (:func:`crop_size`, 224) unless ``--image-size`` says otherwise; images are
resized to it whole, without torchvision's centre crop (the backend maps saliency and masks
back onto the whole image).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustar_ls.data.folders import IMAGENET_MEAN, IMAGENET_STD
from robustar_ls.errors import RobustarError
from robustar_ls.models.weights_download import DownloadFailed, fetch_once, hub_checkpoint_path

log = logging.getLogger(__name__)

OFFLINE_SWITCHES = "--offline, model.offline, ROBUSTAR_LS_OFFLINE=1 or HF_HUB_OFFLINE=1"


class PretrainedUnavailable(RobustarError, RuntimeError):
    """No usable pretrained weights; the message says which file, where, and how to provide it."""


@dataclass(frozen=True)
class InputNormalization:
    """The mean and std a model's input is normalised with, and the weights it started from."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: str | None = None  # e.g. "ResNet18_Weights.IMAGENET1K_V1"; None = trained from scratch

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "weights": self.weights}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> InputNormalization:
        """From a checkpoint's ``normalization`` (the pipeline's when absent: older files)."""
        if not record:
            return cls()
        mean = tuple(float(v) for v in record.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in record.get("std", IMAGENET_STD))
        return cls(mean, std, record.get("weights"))

    @property
    def is_pipelines(self) -> bool:
        """Whether ``data/tensors.normalize`` already gives the model this input."""
        return (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD)


class _Renormalize:
    """Forward pre-hook: the pipeline-normalised input → normalised with ``norm``'s mean/std."""

    def __init__(self, norm: InputNormalization) -> None:
        pipe = InputNormalization()
        self.scale = [p / s for p, s in zip(pipe.std, norm.std, strict=True)]
        self.shift = [(pm - m) / s for pm, m, s in zip(pipe.mean, norm.mean, norm.std, strict=True)]

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        scale = torch.tensor(self.scale, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        shift = torch.tensor(self.shift, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * scale + shift, *args[1:])


def normalization_of(model: nn.Module) -> InputNormalization:
    """The normalisation ``model`` expects (the pipeline's unless :func:`set_normalization`)."""
    return getattr(getattr(model, "module", model), "input_normalization", InputNormalization())


def set_normalization(model: nn.Module, norm: InputNormalization) -> nn.Module:
    """Record ``norm`` on ``model`` and convert its input to it where it is not the pipeline's."""
    old = getattr(model, "_renormalize_hook", None)
    if old is not None:
        old.remove()
    model.input_normalization = norm
    hook = None if norm.is_pipelines else model.register_forward_pre_hook(_Renormalize(norm))
    model._renormalize_hook = hook
    return model


def weights_url(weights: Any) -> str:
    """Where ``weights`` (a torchvision ``WeightsEnum`` member) are downloaded from."""
    return weights.url


def weights_file(weights: Any) -> Path:
    """Where the file of ``weights`` is kept: the torch hub cache, under torchvision's name."""
    return hub_checkpoint_path(weights_url(weights))


def crop_size(weights: Any) -> int:
    """The input side ``weights`` were trained at (their transforms' crop size)."""
    return int(weights.transforms().crop_size[0])


def _how_to_provide(weights: Any) -> str:
    return (
        f"download {weights_url(weights)} on a machine with internet access and copy it to "
        f"{weights_file(weights)} (the torch hub cache, under $TORCH_HOME)"
    )


def fetch_pretrained(weights: Any, *, offline: bool, timeout: float = 10.0) -> Path:
    """The file of ``weights`` in the torch hub cache, downloaded there unless it is there.

    Raises :class:`PretrainedUnavailable` (one line) when it is not there and ``offline``, or
    when the download fails (nothing is left in the cache then).
    """
    path = weights_file(weights)
    if path.is_file():
        return path
    if offline:
        raise PretrainedUnavailable(
            f"no {weights} weights file at {path} and downloads are off ({OFFLINE_SWITCHES}): "
            f"{_how_to_provide(weights)}"
        )
    url = weights_url(weights)
    log.info("downloading the %s weights %s to %s (once per machine)", weights, url, path)
    try:
        fetch_once(url, path, timeout=timeout)
    except DownloadFailed as err:
        raise PretrainedUnavailable(
            f"{err}; {_how_to_provide(weights)}, or run again when it is reachable"
        ) from err
    return path


def load_pretrained(model: nn.Module, weights: Any) -> nn.Module:
    """Load ``weights`` from the torch hub cache into ``model`` (torchvision's architecture with
    the weights' own head) and record their normalisation; never downloads."""
    path = weights_file(weights)
    if not path.is_file():
        raise PretrainedUnavailable(
            f"no {weights} weights file at {path}: `robustar-ls train --pretrained` downloads it "
            f"there unless offline; or {_how_to_provide(weights)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # unreadable file, not a state_dict, other keys or shapes
        first = " ".join(str(err).split())[:300]
        raise PretrainedUnavailable(
            f"{path} does not hold the {weights} weights ({type(err).__name__}: {first}); "
            f"delete it so that it is downloaded again, or {_how_to_provide(weights)}"
        ) from err
    transforms = weights.transforms()
    norm = InputNormalization(tuple(transforms.mean), tuple(transforms.std), str(weights))
    log.info("%s weights loaded from %s", weights, path)
    return set_normalization(model, norm)
