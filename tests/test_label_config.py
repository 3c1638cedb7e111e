"""The default labeling config and tag discovery by type (robustar_ls.labelstudio.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from robustar_ls.labelstudio.config import (
    LabelConfigError,
    LabelConfigTags,
    default_label_config,
    find_tags,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_COPY = REPO_ROOT / "robustar_ls" / "labelstudio" / "robustar.xml"
USER_COPY = REPO_ROOT / "label_config" / "robustar.xml"

RENAMED = """
<View>
  <Header value="$title"/>
  <View style="display: flex">
    <Image name="photo" value="$url"/>
    <Image name="heat" value="$heatmap"/>
  </View>
  <BrushLabels name="paint" toName="photo">
    <Label value="Background" background="blue"/>
    <Label value="Spurious" background="red"/>
  </BrushLabels>
  <TextArea name="notes" toName="photo" editable="false"/>
  <KeyPointLabels name="click" toName="photo" smart="true"><Label value="c"/></KeyPointLabels>
  <RectangleLabels name="box" toName="photo" smart="true"><Label value="b"/></RectangleLabels>
</View>
"""

MINIMAL = """
<View>
  <Image name="img" value="$img"/>
  <BrushLabels name="brush" toName="img"><Label value="Spurious"/></BrushLabels>
</View>
"""


def test_default_config_files_are_identical() -> None:
    """label_config/robustar.xml is the user-facing copy of the packaged default."""
    assert USER_COPY.read_bytes() == PACKAGE_COPY.read_bytes()


def test_default_label_config_reads_packaged_file() -> None:
    assert default_label_config() == PACKAGE_COPY.read_text(encoding="utf-8")


def test_default_config_passes_sdk_validation() -> None:
    interface = LabelInterface(default_label_config())
    interface.validate()
    assert interface.is_valid


def test_default_config_needs_only_images_and_related_html_at_import() -> None:
    """Only named object tags make task-data keys mandatory; Headers stay optional."""
    interface = LabelInterface(default_label_config())
    assert {tag.value for tag in interface.objects} == {"$image", "$saliency", "$related_html"}


def test_find_tags_on_default_config() -> None:
    assert find_tags(default_label_config()) == LabelConfigTags(
        image="image",
        brush="spurious",
        brush_labels=("Spurious", "Model attention"),
        keypoint="colour_pick",
        rectangle="object_box",
        summary_textarea="prediction_summary",
        saliency_image="saliency",
        image_value="image",
    )


def test_default_smart_tools_are_smart() -> None:
    interface = LabelInterface(default_label_config())
    tags = find_tags(default_label_config())
    for name in (tags.keypoint, tags.rectangle):
        assert interface.get_control(name).attr.get("smart") == "true"


def test_default_summary_textarea_is_read_only() -> None:
    control = LabelInterface(default_label_config()).get_control("prediction_summary")
    assert control.attr.get("editable") == "false"


def test_renamed_tags_are_found_by_type() -> None:
    assert find_tags(RENAMED) == LabelConfigTags(
        image="photo",
        brush="paint",
        brush_labels=("Background", "Spurious"),
        keypoint="click",
        rectangle="box",
        summary_textarea="notes",
        saliency_image="heat",
        image_value="url",
    )


def test_optional_tags_may_be_missing() -> None:
    tags = find_tags(MINIMAL)
    assert (tags.image, tags.brush, tags.brush_labels) == ("img", "brush", ("Spurious",))
    assert tags.keypoint is tags.rectangle is tags.summary_textarea is tags.saliency_image is None


def test_brush_with_spurious_label_wins_over_earlier_brush() -> None:
    config = MINIMAL.replace(
        '<BrushLabels name="brush"',
        '<BrushLabels name="other" toName="img"><Label value="Cat"/></BrushLabels>'
        '<BrushLabels name="brush"',
    )
    assert find_tags(config).brush == "brush"


def test_tools_on_another_image_are_ignored() -> None:
    config = RENAMED.replace('name="box" toName="photo"', 'name="box" toName="heat"')
    assert find_tags(config).rectangle is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            '<View><Text name="t" value="$t"/>'
            '<Labels name="l" toName="t"><Label value="Spurious"/></Labels></View>',
            "no <Image>",
        ),
        (
            '<View><Image name="i" value="$i"/>'
            '<RectangleLabels name="r" toName="i"><Label value="Spurious"/></RectangleLabels>'
            "</View>",
            "no <BrushLabels>",
        ),
        (MINIMAL.replace('value="Spurious"', 'value="Background"'), '"Spurious"'),
        (MINIMAL.replace('toName="img"', 'toName="missing"'), "invalid"),
        ("<View><Image name='i' value='$i'>", "invalid"),
        (MINIMAL.replace('value="$img"', 'value="http://example.com/a.png"'), "task data"),
    ],
    ids=["no-image", "no-brush", "no-spurious", "dangling-toname", "bad-xml", "static-url"],
)
def test_unusable_configs_raise(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        find_tags(config)


def test_label_config_error_is_a_value_error() -> None:
    assert issubclass(LabelConfigError, ValueError)
