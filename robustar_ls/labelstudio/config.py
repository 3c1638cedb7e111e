"""Find the tags robustar-ls needs in a Label Studio labeling config.

Tags are found by their *type* and by what they point at, never by name, so a user may rename
them (``<BrushLabels name="mask" ...>``) and the backend still knows where to put its results.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from robustar_ls.errors import RobustarError
from robustar_ls.labels import SPURIOUS_LABEL

if TYPE_CHECKING:  # the SDK's label interface takes seconds to import: loaded when parsing
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.control_tags import ControlTag
    from label_studio_sdk.label_interface.object_tags import ObjectTag

DEFAULT_CONFIG_RESOURCE = "robustar.xml"


class LabelConfigError(RobustarError, ValueError):
    """The labeling config is not usable by robustar-ls (or not valid at all)."""


@dataclass(frozen=True)
class LabelConfigTags:
    """Names of the tags robustar-ls reads and writes, as found in one labeling config.

    ``image_value`` is the task-data key of the annotated image (``"image"`` for
    ``value="$image"``). Optional tools are ``None`` when the config lacks them.
    """

    image: str
    brush: str
    brush_labels: tuple[str, ...]
    keypoint: str | None
    rectangle: str | None
    summary_textarea: str | None
    saliency_image: str | None
    image_value: str


def default_label_config() -> str:
    """Return the default labeling config shipped with the package (``robustar.xml``)."""
    package = resources.files(__package__ or "robustar_ls.labelstudio")
    return package.joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")


def parse_label_config(label_config_xml: str) -> LabelInterface:
    """Parse and validate a config with the SDK; any failure becomes a `LabelConfigError`."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(label_config_xml)
        interface.validate()
    except Exception as exc:  # the SDK raises bare Exception subclasses of its own
        raise LabelConfigError(f"invalid Label Studio labeling config: {exc}") from exc
    return interface


def find_tags(label_config_xml: str) -> LabelConfigTags:
    """Find the image, the "Spurious" brush and the optional tools in a labeling config.

    Raises `LabelConfigError` when the config does not parse, has no ``<Image>``, no
    ``<BrushLabels>``, or no ``<BrushLabels>`` with a "Spurious" label on an image.
    """
    interface = parse_label_config(label_config_xml)
    images = _objects_of_type(interface, "image")
    if not images:
        raise LabelConfigError("labeling config has no <Image> tag to annotate")
    brush = _spurious_brush(interface, set(images))
    image = brush.to_name[0]
    return LabelConfigTags(
        image=image,
        brush=brush.name,
        brush_labels=tuple(brush.labels),
        keypoint=_control_on(interface, "keypointlabels", image),
        rectangle=_control_on(interface, "rectanglelabels", image),
        summary_textarea=_control_on(interface, "textarea", image),
        saliency_image=next((name for name in images if name != image), None),
        image_value=_data_key(images[image].value, image),
    )


def _objects_of_type(interface: LabelInterface, tag_type: str) -> dict[str, ObjectTag]:
    """Object tags (``<Image>``, ``<Text>``...) of one type, by name, in document order."""
    return {tag.name: tag for tag in interface.objects if tag.tag.lower() == tag_type}


def _controls_of_type(interface: LabelInterface, tag_type: str) -> list[ControlTag]:
    """Control tags (``<BrushLabels>``...) of one type, in document order."""
    return [tag for tag in interface.controls if tag.tag.lower() == tag_type]


def _spurious_brush(interface: LabelInterface, image_names: set[str]) -> ControlTag:
    """The first ``<BrushLabels>`` on an image that has a "Spurious" label."""
    brushes = [
        tag
        for tag in _controls_of_type(interface, "brushlabels")
        if tag.to_name and tag.to_name[0] in image_names
    ]
    if not brushes:
        raise LabelConfigError("labeling config has no <BrushLabels> tag on an <Image>")
    for brush in brushes:
        if SPURIOUS_LABEL in brush.labels:
            return brush
    found = ", ".join(f"{tag.name}: {list(tag.labels)}" for tag in brushes)
    raise LabelConfigError(f'no <BrushLabels> has a "{SPURIOUS_LABEL}" label (found {found})')


def _control_on(interface: LabelInterface, tag_type: str, image: str) -> str | None:
    """Name of the first control of ``tag_type`` pointing at ``image``, if any."""
    for tag in _controls_of_type(interface, tag_type):
        if image in tag.to_name:
            return tag.name
    return None


def _data_key(value: str | None, image: str) -> str:
    """Task-data key of an ``<Image value="$key">``; other forms are not supported."""
    if not value or not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Image name="{image}"> must take its URL from task data (value="$key"), '
            f"got value={value!r}"
        )
    return value[1:]
