"""COCO reader validation, transforms and collate."""

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetection,
    DatasetError,
    RandomHorizontalFlip,
    RandomResize,
    ToTensorNormalize,
    build_transforms,
    collate_detection,
    make_shapes,
)
from detrdistill.data.transforms import train_sizes

# Non-contiguous category ids listed out of order, a non-square image and an image without objects.
HAND_COCO = {
    "images": [
        {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 20, "file_name": "b.png", "width": 20, "height": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 11, "bbox": [5, 10, 10, 10]},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
    ],
    "categories": [{"id": 11, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
}


def write_dataset(root, coco, split="train", layout="images", make_images=True, images=None):
    """Writes coco as root/annotations/instances_<split>.json with solid-colour images.

    The images follow coco["images"], or `images` when the records themselves are broken.
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    image_dir = root / "images" / split if layout == "images" else root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    if make_images:
        for image in images or coco["images"]:
            Image.new("RGB", (image["width"], image["height"]), (200, 100, 50)).save(image_dir / image["file_name"])
    return root


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, progress=False)


@pytest.fixture
def hand_root(tmp_path):
    return write_dataset(tmp_path, HAND_COCO)


# --- Reading ---


def test_generated_dataset_round_trips_through_eval_transforms(shapes_root):
    dataset = CocoDetection(shapes_root, "train", transforms=build_transforms(train=False, image_size=128))
    coco = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    assert len(dataset) == 12 and dataset.num_classes == 6
    assert dataset.image_ids == [image["id"] for image in coco["images"]]
    for index in range(len(dataset)):
        image, target = dataset[index]
        record = dataset.image_info(index)
        annotations = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert target["image_id"] == record["id"]
        assert torch.allclose(target["boxes_xyxy_abs"], expected.reshape(-1, 4))
        assert target["class_labels"].tolist() == [a["category_id"] - 1 for a in annotations]
        assert target["orig_size"].tolist() == target["size"].tolist() == [128, 128]
        assert target["scale"] == 1.0


def test_hand_written_dataset_maps_sparse_category_ids_to_contiguous_labels(hand_root):
    dataset = CocoDetection(hand_root, "train")
    assert dataset.category_ids == [3, 7, 11]
    assert dataset.label_to_category_id == [3, 7, 11]
    assert dataset.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert [c["name"] for c in dataset.categories] == ["cat", "dog", "bird"]
    assert dataset.annotation_file == hand_root / "annotations" / "instances_train.json"
    assert dataset.coco_json == HAND_COCO

    image, target = dataset[0]
    assert isinstance(image, Image.Image) and image.size == (40, 30)
    assert target["orig_size"].tolist() == [30, 40]
    # The crowd annotation is left out of the target.
    assert target["boxes_xyxy_abs"].tolist() == [[5, 10, 15, 20], [0, 0, 40, 30]]
    assert target["class_labels"].tolist() == [2, 0]
    assert target["boxes_xyxy_abs"].dtype == torch.float32 and target["class_labels"].dtype == torch.long


def test_image_without_objects_gives_empty_targets(hand_root):
    _, target = CocoDetection(hand_root, "train", transforms=build_transforms(False, 16))[1]
    assert target["boxes_xyxy_abs"].shape == (0, 4)
    assert target["class_labels"].shape == (0,)
    batch = collate_detection([CocoDetection(hand_root, "train", transforms=build_transforms(False, 16))[1]])
    assert batch["labels"][0]["boxes"].shape == (0, 4)
    assert batch["labels"][0]["class_labels"].shape == (0,)


def test_images_may_live_in_split_folder_like_coco2017(tmp_path):
    write_dataset(tmp_path, HAND_COCO, split="val2017", layout="split")
    dataset = CocoDetection(tmp_path, "val2017")
    assert dataset.image_dir == tmp_path / "val2017"
    assert dataset[0][0].size == (40, 30)


def test_missing_image_folder_names_both_candidates(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(HAND_COCO))
    with pytest.raises(DatasetError, match="neither") as error:
        CocoDetection(tmp_path, "train")
    assert str(tmp_path / "images" / "train") in str(error.value)
    assert str(tmp_path / "train") in str(error.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="instances_val.json does not exist"):
        CocoDetection(tmp_path, "val")


def test_unknown_invalid_boxes_mode_is_refused(hand_root):
    with pytest.raises(ValueError, match="invalid_boxes"):
        CocoDetection(hand_root, "train", invalid_boxes="drop")


# --- Validation: each bad record names the file, the record and the field ---


def set_path(coco, path, value):
    *parents, last = path
    target = coco
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value


DELETE = object()
BAD_RECORDS = [
    (("annotations",), DELETE, ["'annotations'", "top-level"]),
    (("images", 1, "file_name"), DELETE, ["images[1]", "file_name"]),
    (("images", 0, "width"), DELETE, ["images[0]", "width"]),
    (("images", 0, "file_name"), 7, ["images[0]", "file_name", "string"]),
    (("images", 0, "height"), 0, ["images[0]", "height", "> 0"]),
    (("annotations", 1, "bbox"), DELETE, ["annotations[1]", "bbox"]),
    (("annotations", 1, "image_id"), DELETE, ["annotations[1]", "image_id"]),
    (("annotations", 1, "category_id"), DELETE, ["annotations[1]", "category_id"]),
    (("categories", 2, "name"), DELETE, ["categories[2]", "name"]),
    (("categories", 0, "id"), DELETE, ["categories[0]", "id"]),
    (("annotations", 1, "bbox"), [1, 2, 3], ["annotations[1]", "bbox", "4 finite numbers"]),
    (("annotations", 1, "bbox"), [1, 2, "3", 4], ["annotations[1]", "bbox", "4 finite numbers"]),
    (("annotations", 1, "bbox"), [1, 2, 0, 4], ["annotations[1]", "bbox", "non-positive", "reject"]),
    (("annotations", 1, "bbox"), [1, 2, 5, -1], ["annotations[1]", "bbox", "non-positive", "reject"]),
    (("annotations", 1, "bbox"), [50, 2, 5, 5], ["annotations[1]", "bbox", "entirely outside", "reject"]),
    (("annotations", 1, "category_id"), 5, ["annotations[1]", "category_id", "5"]),
    (("annotations", 1, "image_id"), 99, ["annotations[1]", "image_id", "99"]),
    (("images", 1, "id"), 10, ["images[1]", "id", "repeats images[0]"]),
    (("categories", 1, "id"), 11, ["categories[1]", "id", "repeats categories[0]"]),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), BAD_RECORDS, ids=[" ".join(expected[:2]) for _, _, expected in BAD_RECORDS]
)
def test_bad_record_raises_dataset_error_naming_file_record_and_field(tmp_path, path, value, expected):
    coco = copy.deepcopy(HAND_COCO)
    set_path(coco, path, value)
    write_dataset(tmp_path, coco, images=HAND_COCO["images"])
    with pytest.raises(DatasetError) as error:
        CocoDetection(tmp_path, "train")
    message = str(error.value)
    assert "instances_train.json" in message
    for text in expected:
        assert text in message


def test_non_json_file_is_reported(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    (tmp_path / "annotations" / "instances_train.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_train\.json is not valid JSON \(line 1"):
        CocoDetection(tmp_path, "train")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_boxes_outside_the_image_are_clipped_with_one_warning(tmp_path):
    coco = copy.deepcopy(HAND_COCO)
    coco["annotations"][0]["bbox"] = [-5, 25, 10, 10]  # pokes out left and bottom of 40x30
    coco["annotations"][1]["bbox"] = [30, 0, 20, 5]  # pokes out right
    write_dataset(tmp_path, coco)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(tmp_path, "train")
    assert len(caught) == 1
    assert "2 boxes" in str(caught[0].message) and "annotations[0]" in str(caught[0].message)
    assert dataset[0][1]["boxes_xyxy_abs"].tolist() == [[0, 25, 5, 30], [30, 0, 40, 5]]
    # The loaded JSON stays as written: it is the evaluator's ground truth.
    assert dataset.coco_json["annotations"][0]["bbox"] == [-5, 25, 10, 10]

    with pytest.raises(DatasetError, match=r"annotations\[0\]\.bbox .* rejected \(invalid_boxes='reject'\)"):
        CocoDetection(tmp_path, "train", invalid_boxes="reject")


def test_boxes_inside_the_image_do_not_warn(hand_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDetection(hand_root, "train", invalid_boxes="reject")


# --- Image files ---


def test_missing_image_file_is_reported_lazily_and_by_check_files(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    (tmp_path / "images" / "train" / "b.png").unlink()
    dataset = CocoDetection(tmp_path, "train")
    dataset[0]
    with pytest.raises(DatasetError) as error:
        dataset[1]
    message = str(error.value)
    assert str(tmp_path / "images" / "train" / "b.png") in message
    assert "images[1]" in message and "does not exist" in message and "check_files" in message
    with pytest.raises(DatasetError, match=r"1 of 2 image files .* missing:\n  images\[1\]: .*b\.png"):
        dataset.check_files()


def test_check_files_lists_at_most_ten_missing_files(tmp_path):
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 4, "height": 4} for i in range(12)],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    write_dataset(tmp_path, coco, make_images=False)
    with pytest.raises(DatasetError) as error:
        CocoDetection(tmp_path, "train").check_files()
    message = str(error.value)
    assert message.startswith("12 of 12 image files")
    assert "images[9]" in message and "images[10]" not in message and "and 2 more" in message


def test_corrupt_image_file_is_reported(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    (tmp_path / "images" / "train" / "a.png").write_bytes(b"not a png")
    dataset = CocoDetection(tmp_path, "train")
    dataset.check_files()  # present, so check_files is satisfied
    with pytest.raises(DatasetError, match=r"a\.png for images\[0\] .* could not be read"):
        dataset[0]


def test_image_size_disagreeing_with_record_is_reported(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    Image.new("RGB", (30, 40)).save(tmp_path / "images" / "train" / "a.png")
    with pytest.raises(DatasetError, match=r"is 30x40 but images\[0\] .* says 40x30"):
        CocoDetection(tmp_path, "train")[0]


def test_cached_split_decodes_each_image_once_and_yields_the_same_samples(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    transforms = build_transforms(train=False, image_size=16)
    from_disk = CocoDetection(tmp_path, "train", transforms=transforms)
    cached = CocoDetection(tmp_path, "train", transforms=transforms, cache_mb=1)
    assert cached.caches_images and not from_disk.caches_images
    first = [cached[i] for i in range(2)]
    for path in (tmp_path / "images" / "train").iterdir():
        path.unlink()
    for (image, target), (again, again_target) in zip(first, [cached[i] for i in range(2)], strict=True):
        assert torch.equal(image, again) and torch.equal(target["boxes_xyxy_abs"], again_target["boxes_xyxy_abs"])
    with pytest.raises(DatasetError, match="does not exist"):
        from_disk[0]


def test_split_larger_than_the_cache_budget_reads_from_disk(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    # 40x30 + 20x20 pixels at 4 bytes: 6400 bytes, over a 0.005 MiB (5243-byte) budget.
    dataset = CocoDetection(tmp_path, "train", cache_mb=0.005)
    assert not dataset.caches_images
    dataset[0]
    (tmp_path / "images" / "train" / "a.png").unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        dataset[0]
    assert CocoDetection(tmp_path, "train", cache_mb=0.0062).caches_images


def test_untransformed_view_shares_the_image_cache(tmp_path):
    write_dataset(tmp_path, HAND_COCO)
    dataset = CocoDetection(tmp_path, "train", transforms=build_transforms(train=False, image_size=16), cache_mb=1)
    raw_image, raw_target = dataset.without_transforms()[0]
    assert isinstance(raw_image, Image.Image) and raw_target["boxes_xyxy_abs"].shape == (2, 4)
    (tmp_path / "images" / "train" / "a.png").unlink()
    image, _ = dataset[0]
    assert image.shape == (3, 16, 21)


# --- Transforms ---


def make_target(boxes):
    return {"boxes_xyxy_abs": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}


def test_horizontal_flip_mirrors_image_and_boxes():
    image = Image.new("RGB", (40, 30))
    image.putpixel((0, 0), (255, 0, 0))
    flipped, target = RandomHorizontalFlip(p=1.0)(image, make_target([[5, 10, 15, 20]]))
    assert target["boxes_xyxy_abs"].tolist() == [[25, 10, 35, 20]]
    assert flipped.getpixel((39, 0)) == (255, 0, 0)
    same, target = RandomHorizontalFlip(p=0.0)(image, make_target([[5, 10, 15, 20]]))
    assert same is image and target["boxes_xyxy_abs"].tolist() == [[5, 10, 15, 20]]


def test_resize_scales_shorter_side_and_boxes():
    image, target = RandomResize([60])(Image.new("RGB", (40, 30)), make_target([[5, 10, 15, 20]]))
    assert image.size == (80, 60)
    assert target["boxes_xyxy_abs"].tolist() == [[10, 20, 30, 40]]
    assert target["scale"] == 2.0


def test_resize_caps_the_longer_side_and_composes_scale():
    target = {**make_target([[0, 0, 30, 30]]), "scale": 0.5}
    image, target = RandomResize([60], max_size=70)(Image.new("RGB", (40, 30)), target)
    # 60 would make the long side 80 > 70, so the short side becomes 70 * 30 // 40 = 52.
    assert image.size == (69, 52)
    assert target["scale"] == pytest.approx(0.5 * 52 / 30)
    assert target["boxes_xyxy_abs"][0].tolist() == pytest.approx([0, 0, 52, 52])


def test_to_tensor_normalises_and_records_size():
    image = Image.new("RGB", (3, 2), (255, 0, 0))
    tensor, target = ToTensorNormalize()(image, make_target([]))
    assert tensor.shape == (3, 2, 3)
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    assert tensor[:2, 1, 2].tolist() == pytest.approx(expected)
    assert target["size"].tolist() == [2, 3]


def test_to_tensor_matches_the_channels_last_formula_bit_for_bit():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    mean, std = np.asarray(IMAGENET_MEAN, dtype=np.float32), np.asarray(IMAGENET_STD, dtype=np.float32)
    expected = torch.from_numpy(((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy())
    tensor, _ = ToTensorNormalize()(Image.fromarray(pixels), make_target([]))
    assert torch.equal(tensor, expected)


def test_train_transforms_jitter_scale_reproducibly(hand_root):
    assert train_sizes(128) == [104, 112, 120, 128, 136, 144, 152]
    dataset = CocoDetection(hand_root, "train", transforms=build_transforms(train=True, image_size=128))

    def sample():
        torch.manual_seed(0)
        return [dataset[0][1] for _ in range(12)]

    first, second = sample(), sample()
    assert [t["size"].tolist() for t in first] == [t["size"].tolist() for t in second]
    assert all(torch.equal(a["boxes_xyxy_abs"], b["boxes_xyxy_abs"]) for a, b in zip(first, second, strict=True))
    assert len({t["size"][0].item() for t in first}) > 1
    assert all(t["size"][0].item() in train_sizes(128) for t in first)


# --- Collate ---


def test_collate_pads_masks_and_normalises_boxes_to_padded_canvas():
    small = torch.ones(3, 2, 3)  # h=2, w=3
    tall = torch.full((3, 4, 2), 2.0)  # h=4, w=2
    batch = collate_detection(
        [
            (
                small,
                {
                    "image_id": 1,
                    "orig_size": torch.tensor([4, 6]),
                    "scale": 0.5,
                    "boxes_xyxy_abs": torch.tensor([[0.0, 0.0, 3.0, 2.0]]),
                    "class_labels": torch.tensor([4]),
                },
            ),
            (
                tall,
                {
                    "image_id": 2,
                    "orig_size": torch.tensor([4, 2]),
                    "boxes_xyxy_abs": torch.zeros(0, 4),
                    "class_labels": torch.zeros(0, dtype=torch.long),
                },
            ),
        ]
    )
    assert batch["padded_size"] == (4, 3)
    assert batch["pixel_values"].shape == (2, 3, 4, 3)
    assert batch["pixel_mask"].dtype == torch.long
    assert batch["pixel_mask"][0].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert batch["pixel_mask"][1].tolist() == [[1, 1, 0]] * 4
    assert batch["pixel_values"][0, :, 2:].abs().sum() == 0 and batch["pixel_values"][0, :, :2].eq(1).all()
    assert batch["pixel_values"][1, :, :, 2].abs().sum() == 0
    # Box 3x2 at the origin on a 3-wide, 4-high canvas.
    assert batch["labels"][0]["boxes"].tolist() == [[0.5, 0.25, 1.0, 0.5]]
    assert batch["labels"][0]["class_labels"].tolist() == [4]
    assert batch["labels"][1]["boxes"].shape == (0, 4) and batch["labels"][1]["class_labels"].shape == (0,)
    assert batch["meta"] == [
        {"image_id": 1, "orig_size": (4, 6), "size": (2, 3), "scale": 0.5},
        {"image_id": 2, "orig_size": (4, 2), "size": (4, 2), "scale": 1.0},
    ]


def test_collate_refuses_untransformed_images(hand_root):
    with pytest.raises(TypeError, match="build_transforms"):
        collate_detection([CocoDetection(hand_root, "train")[0]])


def test_dataloader_batches_the_generated_dataset(shapes_root):
    dataset = CocoDetection(shapes_root, "val", transforms=build_transforms(train=False, image_size=96))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_detection)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 96, 96)
    assert batch["pixel_mask"].all()
    for labels, meta in zip(batch["labels"], batch["meta"], strict=True):
        assert meta["scale"] == 0.75 and meta["orig_size"] == (128, 128)
        if len(labels["boxes"]):
            assert labels["boxes"].min() >= 0 and labels["boxes"].max() <= 1


@pytest.mark.parametrize("file_name", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_a_file_name_outside_the_image_folder_is_refused_unless_allowed(tmp_path, file_name):
    coco = copy.deepcopy(HAND_COCO)
    coco["images"][0]["file_name"] = file_name
    write_dataset(tmp_path, coco, make_images=False)
    with pytest.raises(DatasetError, match=r"images\[0\].file_name .* points outside the image folder"):
        CocoDetection(tmp_path, "train")
    assert CocoDetection(tmp_path, "train", allow_files_outside_root=True).image_path(0).name == Path(file_name).name


def test_segmentation_only_annotations_get_their_masks_box(tmp_path):
    from pycocotools import mask as coco_mask

    coco = copy.deepcopy(HAND_COCO)
    for annotation in coco["annotations"]:
        annotation.pop("bbox")
    coco["annotations"][0]["segmentation"] = [[5, 10, 15, 10, 15, 20, 5, 20]]  # a square polygon
    square = np.zeros((30, 40), dtype=np.uint8, order="F")
    square[0:30, 0:40] = 1
    rle = coco_mask.encode(square)
    rle["counts"] = rle["counts"].decode()
    coco["annotations"][1]["segmentation"] = rle  # compressed RLE over the whole image
    coco["annotations"][2]["segmentation"] = [[1, 1, 6, 1, 6, 6, 1, 6]]
    write_dataset(tmp_path, coco)
    dataset = CocoDetection(tmp_path, "train")
    boxes = dataset[0][1]["boxes_xyxy_abs"].tolist()
    assert boxes == [[5.0, 10.0, 15.0, 20.0], [0.0, 0.0, 40.0, 30.0]]  # the crowd one stays out of targets
    assert dataset.coco_json["annotations"][0]["bbox"] == [5.0, 10.0, 10.0, 10.0]  # evaluation sees it too
    coco["annotations"][0]["segmentation"] = "not a mask"
    write_dataset(tmp_path, coco)
    with pytest.raises(DatasetError, match=r"annotations\[0\] has no bbox and its segmentation cannot be read"):
        CocoDetection(tmp_path, "train")
