"""Target-awareness of FD's masks: hand-checked measures, and every form on a tiny teacher."""

import pytest
import torch

from detrdistill.analysis.draw import load_batch
from detrdistill.analysis.mask_focus import box_coverage, format_focus_table, level_measures, mask_focus
from detrdistill.config import FeatureDistillConfig
from detrdistill.data.coco import CocoDetection
from detrdistill.data.transforms import build_transforms
from tests.conftest import IMAGE_SIZE, make_tiny_detector

# A box over the top-left 2 x 2 cells of a 4 x 4 map: centres 0.125 and 0.375 are inside [0, 0.5].
BOX = torch.tensor([[0.25, 0.25, 0.5, 0.5]])


def test_box_coverage_by_hand():
    coverage = box_coverage(BOX, (4, 4))
    assert coverage[:2, :2].eq(1).all() and coverage.sum() == 4
    half_cell = box_coverage(torch.tensor([[0.125, 0.0625, 0.25, 0.125]]), (4, 4))  # top half of cell (0, 0)
    assert half_cell[0, 0] == pytest.approx(0.5) and half_cell.sum() == pytest.approx(0.5)


def test_uniform_weight_has_focus_one_and_weight_on_the_box_has_focus_four():
    valid = torch.ones(4, 4, dtype=torch.bool)
    uniform = level_measures(torch.full((4, 4), 2.0), valid, BOX)
    assert uniform["weight_in_gt"] == pytest.approx(0.25) and uniform["gt_pixel_share"] == pytest.approx(0.25)
    assert uniform["focus"] == pytest.approx(1.0) and uniform["peak"] == pytest.approx(1.0)
    assert uniform["mean_weight"] == pytest.approx(2.0)
    on_box = torch.zeros(4, 4)
    on_box[:2, :2] = 1.0
    focused = level_measures(on_box, valid, BOX)
    assert focused["weight_in_gt"] == pytest.approx(1.0) and focused["focus"] == pytest.approx(4.0)
    assert focused["peak"] == pytest.approx(4.0)  # E[w^2] = 1/4, E[w]^2 = 1/16
    assert level_measures(on_box, valid, torch.zeros(0, 4)) is None


def test_every_form_is_measured_on_a_teacher(shapes_dir):
    dataset = CocoDetection(shapes_dir, "val", transforms=build_transforms(False, IMAGE_SIZE))
    teacher = make_tiny_detector("deformable_detr", id2label=dataset.id2label, perturb=0.2)
    forms = {"quality": FeatureDistillConfig(), "quality tau 0.25": FeatureDistillConfig(temperature=0.25),
             "paper": FeatureDistillConfig(mask="paper"), "vanilla": FeatureDistillConfig(mask="vanilla"),
             "release": FeatureDistillConfig(mask="release"),
             "quality, encoder input": FeatureDistillConfig(features="encoder_input")}
    results = mask_focus(teacher, [load_batch(dataset, list(range(4)))], forms)
    assert list(results) == list(forms)
    for result in results.values():
        assert 0 <= result["weight_in_gt"] <= 1 and 0 < result["gt_pixel_share"] < 1
        assert len(result["per_level"]["focus"]) == 3  # the tiny Deformable DETR has three levels
        assert result["peak"] >= 1.0 - 1e-9
    # The softmax masks have mean 1 per query, so mean_i q_i psi_i^2 has the scale of q, not of the features.
    assert results["paper"]["mean_weight"] != pytest.approx(results["quality"]["mean_weight"], rel=0.5)
    assert teacher.training  # left as it was found
    assert "| paper |" in format_focus_table(results)
