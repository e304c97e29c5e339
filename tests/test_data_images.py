"""The one image reader: 16-bit images, EXIF orientation, palette / CMYK / alpha, float refused."""

import json

import numpy as np
import pytest
from PIL import Image

from detrdistill.data import CocoDetection, DatasetError
from detrdistill.data.images import read_rgb


def _dataset(root, file_name, width, height):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    coco = {"images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root / "images" / "train" / file_name


def test_a_16_bit_png_keeps_its_contrast(tmp_path):
    """Read plainly, every value above 255 becomes white; the reader scales the 16-bit range."""
    values = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    path = _dataset(tmp_path, "depth.png", 40, 30)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL opens it as 16-bit
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.99  # the failure being fixed
    image, _ = CocoDetection(tmp_path, "train")[0]
    pixels = np.asarray(image)
    assert pixels.shape == (30, 40, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255
    np.testing.assert_allclose(pixels[..., 0], np.rint(values / 257.0), atol=0)


def test_exif_orientation_is_applied_and_a_stored_size_record_is_explained(tmp_path):
    """A 40 x 20 picture stored sideways (20 x 40) with orientation 6, as phones save them."""
    upright = Image.new("RGB", (40, 20), (0, 0, 0))
    upright.paste((255, 0, 0), (0, 0, 5, 5))  # red mark top left of the picture as viewed
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6  # view by rotating 90 degrees clockwise
    path = _dataset(tmp_path, "phone.jpg", 40, 20)
    stored.save(path, exif=exif, quality=95)
    image, orientation = read_rgb(path)
    assert orientation == 6 and image.size == (40, 20)
    pixels = np.asarray(image).astype(int)
    assert pixels[1, 1, 0] > 200 and pixels[1, 1, 1] < 60  # the mark is back at the top left
    dataset_image, target = CocoDetection(tmp_path, "train")[0]
    assert dataset_image.size == (40, 20)
    _dataset(tmp_path, "phone.jpg", 20, 40)  # the record gives the stored size
    with pytest.raises(DatasetError, match="EXIF orientation 6") as error:
        CocoDetection(tmp_path, "train")[0]
    assert "Fix images[0].width/height, or the boxes" not in str(error.value)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    suffix = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
    path = tmp_path / f"image.{suffix}"
    if mode == "I;16":
        Image.fromarray(np.full((6, 8), 30000, np.uint16)).save(path)
    else:
        Image.new("RGB", (8, 6), (120, 60, 30)).convert(mode).save(path)
    image, _ = read_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 6)


def test_floating_point_images_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(DatasetError, match="floating-point"):
        read_rgb(path)
