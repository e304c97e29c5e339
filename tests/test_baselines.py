"""Comparison feature-KD baselines (FitNet, MGD, FGD, FGFI): hand-checked values, masks,
gradient flow and the distiller's kd_<method> term."""

import pytest
import torch
import yaml
from torch import nn

from detrdistill.config import BASELINE_DEFAULT_WEIGHTS, BaselineKDConfig, ConfigError, RunConfig, load_config
from detrdistill.distiller import DETRDistillObjective
from detrdistill.losses.baselines import FGDLoss, FGFILoss, FitNetLoss, MGDLoss, build_baseline
from detrdistill.losses.baselines.fgd import fgd_attention, foreground_background_masks
from detrdistill.losses.baselines.gt_masks import box_cell_ranges, gt_box_mask, inverse_area_mask
from detrdistill.losses.baselines.mgd import random_keep_mask
from detrdistill.models.build import build_detector
from tests.conftest import TINY_ID2LABEL, make_tiny_model_config

METHODS = ("fitnet", "mgd", "fgd", "fgfi")


def box(x1, y1, x2, y2):
    """A normalised cxcywh box from normalised corners."""
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def valid_grid(height=4, width=4, padded_columns=0, batch=1):
    valid = torch.ones(batch, height, width, dtype=torch.bool)
    if padded_columns:
        valid[:, :, width - padded_columns:] = False
    return valid


def identity_conv(channels: int, kernel_size: int) -> nn.Conv2d:
    """A conv that copies its input (centre tap = identity, zero bias)."""
    conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[range(channels), range(channels), kernel_size // 2, kernel_size // 2] = 1.0
    return conv


# --- GT-box masks -------------------------------------------------------------------------

def test_box_cells_are_the_cells_a_box_overlaps():
    boxes = torch.tensor([box(0.25, 0.0, 0.75, 0.5),  # exactly columns 1-2, rows 0-1 of a 4x4 grid
                          box(0.3, 0.3, 0.4, 0.4),  # inside cell (1, 1): x 1.2-1.6, y 1.2-1.6
                          box(0.1, 0.55, 0.6, 0.99),  # straddles: x 0.4-2.4 -> cols 0-2, y 2.2-3.96 -> rows 2-3
                          box(0.5, 0.5, 0.5, 0.5)])  # zero size on a grid line: still one cell
    ranges = box_cell_ranges(boxes, 4, 4).tolist()
    assert ranges == [[0, 2, 1, 3], [1, 2, 1, 2], [2, 4, 0, 3], [2, 3, 2, 3]]


def test_gt_box_mask_is_one_exactly_inside_boxes_and_zero_outside_and_on_padding():
    valid = valid_grid(4, 4, padded_columns=1, batch=2)
    targets = [{"boxes": torch.tensor([box(0.0, 0.0, 0.5, 0.5), box(0.5, 0.5, 1.0, 1.0)])},
               {"boxes": torch.zeros(0, 4)}]
    mask = gt_box_mask(targets, valid)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    expected[0, 2:, 2] = True  # the second box's column 3 is padding
    assert torch.equal(mask, expected)


def test_inverse_area_mask_gives_each_box_unit_mass_and_the_smaller_box_wins():
    valid = valid_grid(4, 4)
    targets = [{"boxes": torch.tensor([box(0.0, 0.0, 0.5, 0.5), box(0.0, 0.0, 1.0, 1.0)])}]
    weights = inverse_area_mask(targets, valid)[0]
    assert weights[:2, :2].tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert weights[2:].eq(1 / 16).all() and weights[:2, 2:].eq(1 / 16).all()


# --- FitNet -------------------------------------------------------------------------------

def test_fitnet_with_identity_regressor_is_the_mse_over_real_pixels():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=generator)
    teacher = torch.randn(2, 3, 4, 4, generator=generator)
    valid = valid_grid(4, 4, padded_columns=1, batch=2)
    loss = FitNetLoss(3, 3, 1)
    loss.regressors[0] = identity_conv(3, 1)
    expected = sum(((student[b, :, :, :3] - teacher[b, :, :, :3]) ** 2).mean() for b in range(2)) / 2
    assert loss([student], [teacher], [valid]).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss([teacher], [teacher], [valid]).item() == 0.0


def test_fitnet_pairs_a_student_level_with_the_area_averaged_teacher_level():
    teacher = torch.arange(16.0).view(1, 1, 4, 4)  # 2x2 blocks average to 2.5, 4.5, 10.5, 12.5
    student = torch.zeros(1, 1, 2, 2)
    loss = FitNetLoss(1, 1, 1)
    loss.regressors[0] = identity_conv(1, 1)
    expected = (2.5**2 + 4.5**2 + 10.5**2 + 12.5**2) / 4
    assert loss([student], [teacher], [valid_grid(2, 2)]).item() == pytest.approx(expected)


# --- MGD ----------------------------------------------------------------------------------

def test_mgd_mask_zeroes_the_stated_fraction_as_mgd_draws_it():
    keep = random_keep_mask(4, 100, 100, 0.65, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand((4, 1, 100, 100), generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, (uniform <= 0.35).float())
    assert 1 - keep.mean().item() == pytest.approx(0.65, abs=0.01)
    assert random_keep_mask(1, 8, 8, 0.0).eq(1).all()


def test_mgd_with_an_identity_generator_costs_the_masked_teacher_pixels():
    # Non-negative maps pass the generator's ReLU unchanged, so G(M * F) = M * F and with
    # F^S = F^T the loss is the teacher's energy on the masked real pixels, / batch.
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 5, 5, generator=generator)
    valid = valid_grid(5, 5, padded_columns=2, batch=2)
    loss = MGDLoss(3, 3, 1, mask_ratio=0.65)
    loss.generators[0][0], loss.generators[0][2] = identity_conv(3, 3), identity_conv(3, 3)
    torch.manual_seed(7)
    value = loss([features], [features], [valid])
    torch.manual_seed(7)
    keep = random_keep_mask(2, 5, 5, 0.65)
    masked_real = (1 - keep) * valid[:, None]
    assert value.item() == pytest.approx(((features**2) * masked_real).sum().item() / 2, rel=1e-6)
    assert masked_real.sum() > 0


# --- FGD ----------------------------------------------------------------------------------

def test_fgd_attention_hand_values_and_padding():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, 0, 0] = -1.0  # |F| mean over channels: 0.5 at (0, 0), 0 elsewhere
    valid = torch.tensor([[[True, True], [True, False]]])
    spatial, channel = fgd_attention(features, valid, temperature=0.5)
    e = torch.e
    assert spatial[0].flatten().tolist() == pytest.approx([3 * e / (e + 2), 3 / (e + 2), 3 / (e + 2), 0.0])
    assert spatial.sum().item() == pytest.approx(3.0)  # the number of real pixels
    # channel means over the 3 real pixels: 1/3 and 0 -> 2 * softmax([2/3, 0])
    c = torch.tensor([2 / 3, 0.0]).softmax(0) * 2
    assert channel[0].tolist() == pytest.approx(c.tolist())


def test_fgd_foreground_background_split_on_a_known_box():
    valid = valid_grid(4, 4, padded_columns=1)
    foreground, background = foreground_background_masks([{"boxes": torch.tensor([box(0.0, 0.0, 0.5, 0.5)])}], valid)
    assert foreground[0, :2, :2].eq(0.25).all() and foreground.sum().item() == pytest.approx(1.0)
    assert background[0, :2, :2].eq(0).all() and background[0, :, 3].eq(0).all()
    assert background[0, 2:, :3].eq(1 / 8).all() and background.sum().item() == pytest.approx(1.0)


def test_fgd_terms_by_hand_and_zero_for_equal_maps():
    # Teacher |F| = 1 everywhere: both teacher attentions are 1, so fg = sum_box 1/4 * C * d^2.
    teacher = torch.ones(1, 4, 4, 4)
    student = teacher.clone()
    student[0, :, :2, :2] += 0.5
    targets = [{"boxes": torch.tensor([box(0.0, 0.0, 0.5, 0.5)])}]
    valid = valid_grid(4, 4)
    loss = FGDLoss(4, 4, 1)
    terms = loss.level_terms(0, student, teacher, valid, targets)
    assert terms["fg"].item() == pytest.approx(4 * 0.25 * 4 * 0.25)
    assert terms["bg"].item() == 0.0
    # GcBlocks start as the identity (last conv zero), so rela = plain squared error.
    assert terms["rela"].item() == pytest.approx(16 * 0.25)
    spatial, channel = fgd_attention(student, valid, 0.5)
    assert terms["mask"].item() == pytest.approx((channel - 1).abs().sum().item() + (spatial - 1).abs().sum().item())
    assert terms["mask"].item() > 0
    total = loss([student], [teacher], [valid], targets)
    expected = 1e-3 * terms["fg"] + 1e-3 * terms["mask"] + 5e-6 * terms["rela"]
    assert total.item() == pytest.approx(expected.item())
    parts = loss.parts([student], [teacher], [valid], targets)
    assert {name: v.item() for name, v in parts.items()} == pytest.approx(
        {"fg": 1e-3 * terms["fg"].item(), "bg": 0.0, "mask": 1e-3 * terms["mask"].item(),
         "rela": 5e-6 * terms["rela"].item()})
    assert all(v.item() == 0.0 for v in loss.level_terms(0, teacher, teacher, valid, targets).values())


# --- FGFI ---------------------------------------------------------------------------------

def test_fgfi_imitates_only_inside_gt_boxes_normalised_by_twice_the_cell_count():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=generator)
    teacher = torch.randn(2, 3, 4, 4, generator=generator)
    valid = valid_grid(4, 4, padded_columns=1, batch=2)
    targets = [{"boxes": torch.tensor([box(0.0, 0.0, 0.5, 0.5)])}, {"boxes": torch.tensor([box(0.5, 0.0, 1.0, 0.25)])}]
    loss = FGFILoss(3, 3, 1)
    loss.adapters[0] = identity_conv(3, 3)
    squared = ((student - teacher) ** 2).sum(1)
    inside = squared[0, :2, :2].sum() + squared[1, 0, 2]  # image 1's box: row 0, cols 2-3, col 3 padded
    assert loss([student], [teacher], [valid], targets).item() == pytest.approx(inside.item() / (2 * 5), rel=1e-6)
    assert loss([teacher], [teacher], [valid], targets).item() == 0.0
    no_boxes = [{"boxes": torch.zeros(0, 4)}] * 2
    assert loss([student], [teacher], [valid], no_boxes).item() == 0.0


# --- config -------------------------------------------------------------------------------

def test_bad_method_is_a_config_error_naming_the_field_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"distill\.baseline\.method 'kd'.*fitnet"):
        BaselineKDConfig(method="kd")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"distill": {"baseline": {"method": "FitNets"}}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: distill\.baseline\.method 'FitNets'"):
        load_config(path)
    with pytest.raises(ConfigError, match="features"):
        BaselineKDConfig(method="mgd", features="backbone")
    config = BaselineKDConfig()
    config.method = "mdg"  # mutated after construction: caught when the loss is built
    with pytest.raises(ConfigError, match="'mdg'"):
        build_baseline(config, 8, 8, 1)


def test_yaml_loads_a_baseline_and_the_default_weights():
    config = RunConfig()
    assert config.distill.baseline.method == "none" and build_baseline(config.distill.baseline, 8, 8, 1) is None
    assert BaselineKDConfig(method="mgd").resolved_weight() == 2e-5
    assert BaselineKDConfig(method="fgfi").resolved_weight() == 0.01
    assert BaselineKDConfig(method="fgd", weight=3.0).resolved_weight() == 3.0
    assert set(BASELINE_DEFAULT_WEIGHTS) == {"none", *METHODS}


# --- inside the distiller -----------------------------------------------------------------

def tiny_pair(teacher_family, student_family):
    """A wider (64 vs 32) teacher, perturbed off its init, and a fresh student."""
    torch.manual_seed(0)
    teacher_config = make_tiny_model_config(teacher_family)
    teacher_config.d_model = 64
    teacher = build_detector(teacher_config, TINY_ID2LABEL)
    student = build_detector(make_tiny_model_config(student_family), TINY_ID2LABEL)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return teacher, student


def tiny_batch():
    generator = torch.Generator().manual_seed(0)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 48:] = 0
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.5]])},
    ]
    return {"pixel_values": torch.randn(2, 3, 64, 64, generator=generator), "pixel_mask": pixel_mask,
            "labels": labels}


def baseline_config(method, features="encoder_output", weight=None):
    config = RunConfig()
    config.distill.logits.enabled = config.distill.features.enabled = config.distill.assignment.enabled = False
    config.distill.baseline = BaselineKDConfig(method=method, features=features, weight=weight)
    return config


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", [("deformable_detr", "deformable_detr"), ("conditional_detr", "deformable_detr")])
def test_each_baseline_trains_student_and_heads_not_the_teacher(method, pair):
    teacher, student = tiny_pair(*pair)
    objective = DETRDistillObjective(student, teacher, baseline_config(method))
    assert sum(p.numel() for p in objective.heads.baseline.parameters()) > 0
    terms = objective(tiny_batch())
    # FGD's four parts are logged apart; every other baseline is one term.
    kd_names = [f"kd_fgd_{part}" for part in ("fg", "bg", "mask", "rela")] if method == "fgd" else [f"kd_{method}"]
    assert set(terms) == {"det_cls", "det_bbox", "det_giou", *kd_names}
    kd = sum(terms[name] for name in kd_names)
    assert torch.isfinite(kd) and kd.item() > 0
    kd.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in objective.heads.baseline.parameters())
    encoder_grads = [p.grad for n, p in student.named_parameters() if ".encoder." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads)


@pytest.mark.parametrize("features", ["encoder_output", "encoder_input"])
def test_kd_term_is_the_weighted_loss_on_the_configured_maps(features):
    teacher, student = tiny_pair("deformable_detr", "deformable_detr")
    objective = DETRDistillObjective(student, teacher, baseline_config("fitnet", features, weight=3.0))
    batch = tiny_batch()
    term = objective(batch)["kd_fitnet"]
    with torch.no_grad():
        s = objective.student_adapter(batch["pixel_values"], batch["pixel_mask"])
        t = objective.teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
        source = "encoder_inputs" if features == "encoder_input" else "features"
        expected = 3.0 * objective.heads.baseline(getattr(s, source), getattr(t, source), s.feature_masks,
                                                  batch["labels"])
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_baseline_runs_beside_detrdistill_and_is_checkpointed_with_the_heads():
    teacher, student = tiny_pair("deformable_detr", "deformable_detr")
    config = RunConfig()
    config.distill.baseline = BaselineKDConfig(method="fgd")
    objective = DETRDistillObjective(student, teacher, config)
    terms = objective(tiny_batch())
    assert {"fd", "ld_pos_cls", "ad_cls", "kd_fgd_fg", "kd_fgd_bg", "kd_fgd_mask", "kd_fgd_rela"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    assert any(key.startswith("baseline.levels.0.teacher_context") for key in objective.heads.state_dict())
