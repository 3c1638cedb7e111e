from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from robustar_ls.data.images import ImageLoadError, decode_rgb, load_rgb


def test_modes_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "LA", "CMYK", "I;16"):
        image = Image.new(mode, (5, 4))
        path = tmp_path / f"x_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        image.save(path)
        loaded = load_rgb(path)
        assert loaded.mode == "RGB" and loaded.size == (5, 4)


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (10, 20, 30, 255))
    image.save(tmp_path / "a.png")
    pixels = np.asarray(load_rgb(tmp_path / "a.png"))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 1].tolist() == [10, 20, 30]


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 3), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (3, 6)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"hello")
    with pytest.raises(ImageLoadError, match="bad.png is not an image"):
        load_rgb(tmp_path / "bad.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:60])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_rgb(tmp_path / "cut.png")
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_rgb(tmp_path / "missing.png")


def test_pixel_limit(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")
    with pytest.raises(ImageLoadError, match="over the limit"):
        decode_rgb(buffer.getvalue(), "big.png", max_pixels=5000)
    assert decode_rgb(buffer.getvalue(), "ok.png").size == (100, 100)


def test_displayed_size_follows_exif_rotation(tmp_path):
    from robustar_ls.data.images import displayed_size

    image = Image.new("RGB", (6, 3), "red")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif)
    Image.new("RGB", (6, 3)).save(tmp_path / "plain.png")
    assert displayed_size(tmp_path / "r.jpg") == (3, 6) == load_rgb(tmp_path / "r.jpg").size
    assert displayed_size(tmp_path / "plain.png") == (6, 3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageLoadError, match="bad.png"):
        displayed_size(tmp_path / "bad.png")
