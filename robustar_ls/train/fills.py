"""Fills for the spurious pixels of an image: the x̃ of paired training.

Every fill works on a batch of images in [0, 1] (N, C, H, W) and replaces the pixels where the
mask (N, 1, H, W) is set, and only those; the result stays in [0, 1]. Normalisation for the
classifier comes after filling.

Modes (``FILL_MODES``):

- ``noise``: uniform noise in [0, 1], independent per pixel and channel (Robustar's fill,
  the default until ``swap`` measured better);
- ``weak_noise``: the original pixel plus Gaussian noise (σ = ``WEAK_NOISE_STD``), clipped;
- ``black``: zeros;
- ``colour``: one uniformly random colour per image;
- ``stripes``: two random colours in stripes of random period (2–8 px) and direction
  (horizontal, vertical or one of the two diagonals), per image;
- ``mixture``: each image gets one of the modes above, drawn uniformly. (Robustar's mixture
  mode drew a mode name but never applied it; here the draw decides the fill.)
- ``swap`` (the default, ``PairedConfig.fill``): another annotated image's spurious content
  (one of the batch, or of ``donors`` with their ``donor_masks``, e.g. a :class:`DonorPool` of
  earlier batches), one random donor per image: the donor's pixel where the donor's own mask
  is set too, elsewhere the mean colour of the donor's spurious pixels. A realistic
  counterfactual (the object on another training image's background, a patch in another
  class's colour) that never copies a piece of the donor's object: an unmasked copy pasted
  fragments of another class's object into x̃, which taught the model that object's shape
  under the wrong label. Given ``labels`` (and ``donor_labels``), the donor is of *another
  class*: a same-class donor carries the very feature that correlates with the label (the
  same patch colour, the same tinted background), so x̃ would equal x in what matters. An
  image with no allowed donor (none annotated in another class) gets ``colour``.
"""

from __future__ import annotations

import torch

from robustar_ls.errors import RobustarError

BASE_MODES = ("noise", "weak_noise", "black", "colour", "stripes")
FILL_MODES = (*BASE_MODES, "mixture", "swap")
WEAK_NOISE_STD = 0.1
STRIPE_PERIODS = (2, 8)  # inclusive range of the stripe period in pixels


class FillError(RobustarError, ValueError):
    """Bad fill mode or mismatched image and mask shapes."""


def _rand(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    out = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return out.to(like.device)


def _fill_values(
    images: torch.Tensor, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A full-size fill (N, C, H, W) for ``mode`` (not ``mixture``)."""
    n, c, h, w = images.shape
    if mode == "noise":
        return _rand((n, c, h, w), generator, images)
    if mode == "weak_noise":
        # Box–Muller from uniforms keeps every draw on the one generator
        u1 = _rand((n, c, h, w), generator, images).clamp_min(1e-7)
        u2 = _rand((n, c, h, w), generator, images)
        gauss = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
        return (images + WEAK_NOISE_STD * gauss).clamp(0.0, 1.0)
    if mode == "black":
        return torch.zeros_like(images)
    if mode == "colour":
        return _rand((n, c, 1, 1), generator, images).expand(n, c, h, w)
    if mode == "stripes":
        return _stripes(images, generator)
    raise FillError(f"unknown fill mode {mode!r}; choose one of {', '.join(FILL_MODES)}")


def _stripes(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, c, h, w = images.shape
    low, high = STRIPE_PERIODS
    params = _rand((n, 2), generator, images)
    periods = (low + (params[:, 0] * (high - low + 1)).floor().clamp(max=high - low)).view(n, 1, 1)
    directions = (params[:, 1] * 4).floor().clamp(max=3).long()
    colours = _rand((n, 2, c), generator, images)
    ys = torch.arange(h, device=images.device, dtype=images.dtype).view(1, h, 1)
    xs = torch.arange(w, device=images.device, dtype=images.dtype).view(1, 1, w)
    coords = torch.stack([ys + 0 * xs, xs + 0 * ys, ys + xs, ys - xs + w], dim=1)  # (1,4,H,W)
    coord = coords.expand(n, 4, h, w)[torch.arange(n), directions]  # (N, H, W)
    band = (torch.div(coord, periods / 2, rounding_mode="floor") % 2).bool()  # (N, H, W)
    first, second = colours[:, 0].view(n, c, 1, 1), colours[:, 1].view(n, c, 1, 1)
    return torch.where(band.unsqueeze(1), second, first)


def _swap_values(
    images: torch.Tensor,
    masks: torch.Tensor,
    donors: torch.Tensor | None,
    donor_masks: torch.Tensor | None,
    generator: torch.Generator | None,
    labels: torch.Tensor | None = None,
    donor_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each image, the spurious content of a random other image: one of the batch or of
    ``donors``, of another class when ``labels`` are given (see the module docstring)."""
    n = images.shape[0]
    if labels is not None and len(labels) != n:
        raise FillError(f"labels must have one entry per image ({n}), got {len(labels)}")
    pool, pool_masks, pool_labels = images, masks, labels
    if donors is not None and len(donors):
        if donors.dim() != 4 or donors.shape[1:] != images.shape[1:]:
            raise FillError(
                f"donors must be (M, C, H, W) like the images {tuple(images.shape)}, "
                f"got {tuple(donors.shape)}"
            )
        if donor_masks is None:
            raise FillError("swap needs the donors' masks (donor_masks) with the donors")
        donor_masks = as_bool_mask(donor_masks, donors).to(images.device)
        pool = torch.cat([images, donors.to(images.device, images.dtype)])
        pool_masks = torch.cat([masks, donor_masks])
        if labels is not None:
            if donor_labels is None or len(donor_labels) != len(donors):
                raise FillError("swap with labels needs one donor_labels entry per donor")
            pool_labels = torch.cat([labels, donor_labels.to(labels.device)])
    m = pool.shape[0]
    area = pool_masks.sum((2, 3)).clamp_min(1)
    means = (pool * pool_masks).sum((2, 3)) / area  # (M, C): each donor's spurious colour
    content = torch.where(pool_masks, pool, means[:, :, None, None])
    # a donor without spurious pixels has nothing to give; an image is never its own donor
    allowed = pool_masks.flatten(1).any(1).expand(n, m).clone()
    allowed[:, :n] &= ~torch.eye(n, dtype=torch.bool, device=images.device)
    if pool_labels is not None:  # only another class's spurious content breaks the correlation
        allowed &= pool_labels.to(images.device)[None, :] != labels.to(images.device)[:, None]
    scores = _rand((n, m), generator, images)  # a random allowed donor: the top score
    fill = content[torch.where(allowed, scores, torch.full_like(scores, -1.0)).argmax(1)]
    lonely = ~allowed.any(1)  # no donor at all: a flat random colour instead
    if bool(lonely.any()):
        fill[lonely] = _fill_values(images[lonely], "colour", generator)
    return fill


class DonorPool:
    """The last ``capacity`` annotated images (in [0, 1], on the CPU) with their masks and
    labels: ``swap``'s donors beyond the current batch, which at a small budget holds one
    annotated image or none."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def add(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> None:
        images, masks = images.detach().cpu(), masks.detach().cpu().bool()
        labels = labels.detach().cpu()
        if self.images is not None:
            images, masks = torch.cat([self.images, images]), torch.cat([self.masks, masks])
            labels = torch.cat([self.labels, labels])
        keep = slice(-self.capacity, None)
        self.images, self.masks, self.labels = images[keep], masks[keep], labels[keep]


def as_bool_mask(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Masks (N, 1, H, W), bool or float (> 0.5 = spurious), checked against the images."""
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0]:
        raise FillError(
            f"masks must be (N, 1, H, W) for images {tuple(images.shape)}, got {tuple(masks.shape)}"
        )
    if masks.shape[2:] != images.shape[2:]:
        raise FillError(
            f"mask size {tuple(masks.shape[2:])} differs from image size {tuple(images.shape[2:])}"
        )
    return masks if masks.dtype == torch.bool else masks > 0.5


def apply_fill(
    images01: torch.Tensor,
    masks: torch.Tensor,
    mode: str = "noise",
    generator: torch.Generator | None = None,
    donors: torch.Tensor | None = None,
    donor_masks: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    donor_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace the masked pixels of ``images01`` by ``mode``'s fill; a new tensor.

    Unmasked pixels are returned bit-identical. ``generator`` (CPU or the images' device)
    makes the fill reproducible. ``donors`` (M, C, H, W) and ``donor_masks`` (M, 1, H, W):
    images ``swap`` may copy from besides the batch, and where their spurious pixels are;
    ``labels`` (N,) and ``donor_labels`` (M,): ``swap`` takes donors of another class only.
    """
    if images01.dim() != 4:
        raise FillError(f"images must be (N, C, H, W), got {tuple(images01.shape)}")
    mask = as_bool_mask(masks, images01).to(images01.device)
    if mode == "mixture":
        n = images01.shape[0]
        device = generator.device if generator is not None else images01.device
        choice = torch.randint(len(BASE_MODES), (n,), generator=generator, device=device)
        choice = choice.to(images01.device)
        fill = torch.empty_like(images01)
        for index, base in enumerate(BASE_MODES):
            rows = (choice == index).nonzero().flatten()
            if len(rows):
                fill[rows] = _fill_values(images01[rows], base, generator)
    elif mode == "swap":
        fill = _swap_values(images01, mask, donors, donor_masks, generator, labels, donor_labels)
    else:
        if mode not in BASE_MODES:
            raise FillError(f"unknown fill mode {mode!r}; choose one of {', '.join(FILL_MODES)}")
        fill = _fill_values(images01, mode, generator)
    return torch.where(mask, fill, images01)


def mixture_choices(n: int, generator: torch.Generator) -> list[str]:
    """The base mode ``mixture`` would pick for each of ``n`` images with this generator state.

    For tests and logging: consumes the same first draw as :func:`apply_fill`.
    """
    choice = torch.randint(len(BASE_MODES), (n,), generator=generator, device=generator.device)
    return [BASE_MODES[int(i)] for i in choice]
