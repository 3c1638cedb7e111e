"""Where a classifier looks: Grad-CAM or input-gradient maps via captum, and their renderings.

:class:`SaliencyExplainer` turns a normalised batch into per-image maps in ``[0, 1]``;
:func:`attention_mask` turns one map into a graded brush mask (Label Studio draws a brush
region's alpha as opacity, so a graded mask shows as a translucent heatmap);
:func:`heatmap_png` renders a map as a colour overlay PNG for the ``$saliency`` image view.

captum registers its hooks for the duration of one ``attribute`` call and removes them in a
``finally`` block; :meth:`SaliencyExplainer.maps` adds no hooks of its own, leaves the
model's mode (train/eval), its parameters' ``requires_grad`` and ``.grad`` as they were, and
never touches the caller's batch.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from PIL import Image
from torch import nn

from robustar_ls.config import SaliencyConfig
from robustar_ls.models.zoo import head_and_last_block

METHODS = ("gradcam", "input_gradient")


def default_gradcam_layer(model: nn.Module) -> str:
    """The last convolutional block: ``head_and_last_block(model)[0]`` for the zoo's families
    (``layer4.1`` for ResNets, the last ``features.N`` for MobileNet/EfficientNet/ConvNeXt),
    else the last ``nn.Conv2d`` in the model."""
    names = head_and_last_block(model)
    if len(names) == 2:
        return names[0]
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(
            "the model has no convolution for Grad-CAM; pass layer='<module name>' or use "
            "method 'input_gradient'"
        )
    return convs[-1]


class SaliencyExplainer:
    """Saliency maps for a classifier taking normalised ``(N, 3, H, W)`` batches.

    ``layer`` names the module whose activations Grad-CAM weighs (default:
    :func:`default_gradcam_layer`); it is ignored for ``input_gradient``.
    """

    def __init__(
        self, model: nn.Module, cfg: SaliencyConfig | None = None, layer: str | None = None
    ) -> None:
        self.cfg = cfg or SaliencyConfig()
        if self.cfg.method not in METHODS:
            raise ValueError(
                f"unknown saliency method {self.cfg.method!r}; choose one of: {', '.join(METHODS)}"
            )
        _check_fraction(self.cfg.top_fraction)
        self.model = model
        self.layer_name: str | None = None
        self._attributor: LayerGradCam | Saliency
        if self.cfg.method == "gradcam":
            self.layer_name = layer or default_gradcam_layer(model)
            try:
                module = model.get_submodule(self.layer_name)
            except AttributeError:
                raise ValueError(
                    f"the model has no module named {self.layer_name!r} for Grad-CAM; "
                    f"e.g. {', '.join(head_and_last_block(model))}"
                ) from None
            self._attributor = LayerGradCam(model, module)
        else:
            self._attributor = Saliency(model)
        # captum keeps per-call state on the attributor and hooks on the shared model:
        # one call at a time.
        self._lock = threading.Lock()

    def maps(self, batch: torch.Tensor, targets: torch.Tensor | None = None) -> np.ndarray:
        """Saliency of each image for its class in ``targets`` (default: the predicted class).

        Returns ``float32`` ``(N, H, W)`` maps at the batch's resolution, each scaled so its
        maximum is 1 (all zeros where nothing is salient). Grad-CAM keeps positive evidence
        only (ReLU) and is upsampled bilinearly; ``input_gradient`` is the largest absolute
        gradient over the colour channels.
        """
        if batch.ndim != 4:
            raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(batch.shape)}")
        n, _, height, width = batch.shape
        if n == 0:
            return np.zeros((0, height, width), dtype=np.float32)
        device = _model_device(self.model)
        x = batch.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        with self._lock:
            was_training = self.model.training
            self.model.eval()  # no batch-norm statistics updated, no dropout
            try:
                target = self._targets(x, targets)
                with torch.enable_grad():
                    if isinstance(self._attributor, LayerGradCam):
                        cam = self._attributor.attribute(x, target=target, relu_attributions=True)
                        cam = LayerAttribution.interpolate(
                            cam, (height, width), interpolate_mode="bilinear"
                        )
                        sal = cam[:, 0]
                    else:
                        grad = self._attributor.attribute(x, target=target, abs=True)
                        sal = grad.amax(dim=1)
            finally:
                self.model.train(was_training)
        sal = sal.detach().float().clamp(min=0)
        peak = sal.flatten(1).amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        return (sal / peak[:, None, None]).clamp(0, 1).cpu().numpy().astype(np.float32)

    def _targets(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            with torch.no_grad():
                return self.model(x).argmax(dim=1)
        target = torch.as_tensor(targets, device=x.device).long().reshape(-1)
        if target.numel() != x.shape[0]:
            raise ValueError(f"{target.numel()} targets for a batch of {x.shape[0]} images")
        return target


def attention_mask(saliency_hw: np.ndarray, top_fraction: float) -> np.ndarray:
    """The most salient pixels as a graded ``uint8`` mask: 0 elsewhere, 1..255 on them.

    The top ``ceil(top_fraction * H * W)`` pixels are kept (more when values tie at the
    cut-off; pixels with saliency 0 never), and graded linearly from 1 at the cut-off value to
    255 at the maximum (255 everywhere when they all tie).
    """
    sal = np.asarray(saliency_hw, dtype=np.float32)
    if sal.ndim != 2:
        raise ValueError(f"expected a 2-D saliency map, got shape {sal.shape}")
    _check_fraction(top_fraction)
    out = np.zeros(sal.shape, dtype=np.uint8)
    k = math.ceil(top_fraction * sal.size)
    if k == 0 or not np.isfinite(sal).all() or sal.max() <= 0:
        return out
    flat = sal.ravel()
    cut = np.partition(flat, flat.size - k)[flat.size - k]
    inside = (sal >= cut) & (sal > 0)
    low = sal[inside].min()
    high = sal.max()
    if high > low:
        graded = 1 + np.rint(254 * (sal - low) / (high - low))
    else:
        graded = np.full(sal.shape, 255.0)
    out[inside] = graded[inside].astype(np.uint8)
    return out


def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: ``[0, 1]`` values → ``float32`` RGB in ``[0, 1]`` (blue → red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks at 4v = c
    return np.clip(1.5 - np.abs(4 * v - centres), 0, 1)


def resize_map(saliency_hw: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A saliency map resized bilinearly to ``size`` = (width, height), values kept in [0, 1]."""
    sal = np.asarray(saliency_hw, dtype=np.float32)
    width, height = int(size[0]), int(size[1])
    if sal.shape == (height, width):
        return sal.copy()
    resized = Image.fromarray(np.ascontiguousarray(sal)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def heatmap_png(image: Image.Image, saliency_hw: np.ndarray, alpha: float = 0.5) -> bytes:
    """PNG bytes of ``image`` with the saliency map drawn over it in jet colours.

    The map is resized to the image; each pixel is ``(1 - alpha) * image + alpha * colour``.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colour = jet(resize_map(saliency_hw, image.size)) * 255
    blended = np.rint((1 - alpha) * rgb + alpha * colour).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_fraction(top_fraction: float) -> None:
    if not 0 <= top_fraction <= 1:
        raise ValueError(f"top_fraction must be between 0 and 1, got {top_fraction}")


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
