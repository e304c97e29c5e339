"""AdaMixer (models/adamixer) and its adapter: sampling by hand, stages, save/load, distillation, overfitting."""

import json
import math

import pytest
import torch

from detrdistill.config import BackboneConfig, ConfigError, ModelConfig, RunConfig
from detrdistill.data.coco import CocoDetection
from detrdistill.data.collate import collate_detection
from detrdistill.data.transforms import build_transforms
from detrdistill.distiller import DETRDistillObjective
from detrdistill.inference import evaluate_model
from detrdistill.models.adamixer import AdaMixerConfig, AdaMixerForObjectDetection
from detrdistill.models.adamixer.boxes import pairwise_iof, relative_to_xyzr, xyzr_to_cxcywh, xyzr_to_xyxy
from detrdistill.models.adamixer.mixing import AdaptiveMixing
from detrdistill.models.adamixer.sampling import level_weights, make_sample_points, sample_3d
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import (
    backbone_module,
    build_detector,
    load_backbone_weights,
    load_detector,
    resnet_config,
)
from detrdistill.training.loop import DetectionObjective
from detrdistill.training.optim import build_optimizer
from tests.conftest import TINY_ID2LABEL, make_tiny_model_config

D_MODEL, NUM_QUERIES, NUM_STAGES, GROUPS, POINTS, OUT_POINTS = 32, 10, 3, 4, 4, 8
TAU = 2.0
# Parameter noise that spreads stages, queries and boxes apart; much more makes the perturbed
# mixing matrices amplify float rounding (1e-6 -> 1e-3 over three stages).
PERTURB = 0.05


def tiny_adamixer_config(d_model: int = D_MODEL, num_queries: int = NUM_QUERIES, **overrides) -> ModelConfig:
    """Strides 8, 16, 32 (stage2-4): 8x8, 4x4 and 2x2 maps on a 64x64 canvas."""
    values = dict(
        family="adamixer", d_model=d_model, decoder_layers=NUM_STAGES, decoder_attention_heads=4,
        decoder_ffn_dim=2 * d_model, num_queries=num_queries, adamixer_n_points=POINTS, adamixer_groups=GROUPS,
        adamixer_out_points=OUT_POINTS,
        backbone=BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], out_features=["stage2", "stage3",
                                                                                              "stage4"]),
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_adamixer(seed: int = 0, perturb: float = 0.0, **overrides) -> AdaMixerForObjectDetection:
    """A tiny AdaMixer; ``perturb`` adds N(0, perturb^2) to every parameter so that stages,
    queries and boxes differ (at initialisation every query predicts the whole image)."""
    torch.manual_seed(seed)
    model = build_detector(tiny_adamixer_config(**overrides), TINY_ID2LABEL)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64x64 canvases; image 1 is 64 high x 32 wide, zero-padded on the right."""
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 32:] = 0
    pixel_values[1, :, :, 32:] = 0
    return pixel_values, pixel_mask


# --- boxes, sampling and mixing, by hand ---------------------------------------------------------


def test_xyzr_boxes_by_hand():
    # A 16 x 32 box (w x h) centred at (40, 20): z = log2 sqrt(512) = 4.5, r = log2(32 / 16) = 1.
    xyzr = torch.tensor([[40.0, 20.0, 4.5, 1.0]])
    assert torch.allclose(xyzr_to_xyxy(xyzr), torch.tensor([[32.0, 4.0, 48.0, 36.0]]))
    assert torch.allclose(xyzr_to_cxcywh(xyzr, (64, 128)), torch.tensor([[40 / 64, 20 / 128, 16 / 64, 32 / 128]]))
    # The whole-image initial box (0.5, 0.5, 0, 0) of a 32 wide x 64 high image: its own extent.
    whole = relative_to_xyzr(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.tensor([[32, 64]]))
    assert torch.allclose(xyzr_to_xyxy(whole), torch.tensor([[[0.0, 0.0, 32.0, 64.0]]]))
    # IoF (i, j) = |b_i & b_j| / |b_i|: a 10x10 box half inside a 10x20 box.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 20.0]]])
    assert torch.allclose(pairwise_iof(boxes), torch.tensor([[[1.0, 0.5], [0.25, 1.0]]]))


def test_sample_points_follow_the_box_by_hand():
    # Box centre (32, 16), z = 4, r = 1 -> w = 2^3.5, h = 2^4.5. Offset (0.5, -0.25, -2).
    xyzr = torch.tensor([[[32.0, 16.0, 4.0, 1.0]]])
    offsets = torch.tensor([0.5, -0.25, -2.0]).view(1, 1, 3)
    points = make_sample_points(offsets, xyzr, n_groups=1, n_points=1)
    assert points.shape == (1, 1, 1, 1, 3)
    expected = torch.tensor([32 + 0.5 * 2**3.5, 16 - 0.25 * 2**4.5, 2.0])
    assert torch.allclose(points.flatten(), expected)


def test_level_weights_sum_to_one_and_peak_at_the_level_whose_stride_matches_z():
    strides = [4, 8, 16, 32]
    z = torch.linspace(0.0, 7.0, 57)
    weights = level_weights(z, strides, TAU)
    assert weights.shape == (57, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(57))
    for level, stride in enumerate(strides):
        at_level = level_weights(torch.tensor(math.log2(stride)), strides, TAU)
        assert at_level.argmax().item() == level
    # z = 3 (stride 8): weights proportional to exp(-(3 - log2 s)^2 / tau) = e^-0.5, 1, e^-0.5, e^-2.
    raw = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2.0)])
    assert torch.allclose(level_weights(torch.tensor(3.0), strides, TAU), raw / raw.sum())
    # Halfway between strides 8 and 16, the two share equally.
    halfway = level_weights(torch.tensor(3.5), strides, TAU)
    assert halfway[1].item() == pytest.approx(halfway[2].item()) and halfway[1] > halfway[0]


def test_sample_3d_returns_the_bilinear_value_at_known_points():
    # One level of stride 4: a 2x2 map (canvas 8x8), two groups of one channel each;
    # group 1's channel is 10x group 0's. Feature pixel (i, j) has its centre at canvas
    # ((j + 0.5) 4, (i + 0.5) 4), so canvas (x, y) is map column x / 4 - 0.5, row y / 4 - 0.5.
    grid = torch.tensor([[1.0, 2.0], [3.0, 8.0]])
    maps = [torch.stack([grid, 10 * grid])[None]]  # [1, 2, 2, 2]
    xy = torch.tensor([
        [2.0, 2.0],  # pixel (0, 0)'s centre -> 1
        [4.0, 4.0],  # the middle of all four -> (1 + 2 + 3 + 8) / 4 = 3.5
        [3.0, 5.0],  # column 0.25, row 0.75 -> .75*.25*1 + .25*.25*2 + .75*.75*3 + .25*.75*8 = 3.5
        [6.0, 3.0],  # column 1, row 0.25 -> .75*2 + .25*8 = 3.5
        [1.0, 2.0],  # column -0.25: a quarter outside the map, zeros there -> .75*1 = 0.75
    ])
    expected = torch.tensor([1.0, 3.5, 3.5, 3.5, 0.75])
    z = torch.full((5, 1), 7.0)  # with a single level, any z reads it with weight 1
    points = torch.cat([xy, z], -1).view(1, 1, 1, 5, 3).expand(1, 1, 2, 5, 3)  # [B, Q, G, P, 3]
    sampled = sample_3d(maps, [4], points, TAU)
    assert sampled.shape == (1, 1, 2, 5, 1)
    assert torch.allclose(sampled[0, 0, 0, :, 0], expected)
    assert torch.allclose(sampled[0, 0, 1, :, 0], 10 * expected)


def test_sample_3d_mixes_levels_with_the_gaussian_weights():
    # Level 0 (stride 4): the 2x2 map above; level 1 (stride 8, one pixel): constant 100.
    # A point at canvas (4, 4) with z = 2 = log2(4): weights e^0 and e^(-1/2), normalised.
    maps = [torch.tensor([[1.0, 2.0], [3.0, 8.0]]).view(1, 1, 2, 2), torch.full((1, 1, 1, 1), 100.0)]
    points = torch.tensor([4.0, 4.0, 2.0]).view(1, 1, 1, 1, 3)
    w0 = 1 / (1 + math.exp(-0.5))
    sampled = sample_3d(maps, [4, 8], points, TAU)
    assert sampled.item() == pytest.approx(w0 * 3.5 + (1 - w0) * 100.0, rel=1e-6)


def test_adaptive_mixing_shapes_and_per_query_weights():
    torch.manual_seed(0)
    mixing = AdaptiveMixing(D_MODEL, GROUPS, POINTS, OUT_POINTS)
    sampled = torch.randn(2, 5, GROUPS, POINTS, D_MODEL // GROUPS)
    content = torch.randn(2, 5, D_MODEL)
    out = mixing(sampled, content)
    assert out.shape == (2, 5, D_MODEL)
    # With zero generator weights (AdaMixer's init) every query mixes with the same matrices,
    # so equal sampled features give equal updates; trained weights make them query-specific.
    mixing.reset_parameters()
    same = sampled[:, :1].expand_as(sampled)
    update = mixing(same, content) - content
    assert torch.allclose(update, update[:, :1].expand_as(update), atol=1e-6)
    with torch.no_grad():
        mixing.parameter_generator.weight.normal_()
    update = mixing(same, content) - content
    assert not torch.allclose(update, update[:, :1].expand_as(update), atol=1e-3)


# --- the model and its adapter -------------------------------------------------------------------


def test_shapes_through_every_stage_and_the_record():
    model = tiny_adamixer(perturb=PERTURB).eval()
    pixel_values, pixel_mask = padded_batch()
    stage_outputs = []
    handles = [stage.register_forward_hook(lambda _m, _a, out: stage_outputs.append(out)) for stage in model.stages]
    with torch.no_grad():
        record = adapter_for(model)(pixel_values, pixel_mask)
    for handle in handles:
        handle.remove()
    assert len(stage_outputs) == NUM_STAGES
    for content, logits, xyzr in stage_outputs:
        assert content.shape == (2, NUM_QUERIES, D_MODEL)
        assert logits.shape == (2, NUM_QUERIES, len(TINY_ID2LABEL))
        assert xyzr.shape == (2, NUM_QUERIES, 4)

    assert record.class_head == "sigmoid" and record.num_stages == NUM_STAGES
    assert record.logits.shape == (NUM_STAGES, 2, NUM_QUERIES, 3)
    assert record.boxes_cxcywh.shape == (NUM_STAGES, 2, NUM_QUERIES, 4)
    assert record.decoder_hidden.shape == (NUM_STAGES, 2, NUM_QUERIES, D_MODEL)
    assert record.level_shapes == [(8, 8), (4, 4), (2, 2)]
    assert record.encoder_inputs is not record.features and len(record.encoder_inputs) == 3
    for features, mask, (h, w) in zip(record.features, record.feature_masks, record.level_shapes, strict=True):
        assert features.shape == (2, D_MODEL, h, w)
        assert mask.shape == (2, h, w) and mask.dtype == torch.bool
        assert mask[0].all() and mask[1, :, : w // 2].all() and not mask[1, :, w // 2:].any()
    assert record.query_embeddings.shape == (NUM_QUERIES, D_MODEL + 4)
    # Stage k's boxes are stage k's own predictions: the stages differ once perturbed.
    assert not torch.allclose(record.boxes_cxcywh[0], record.boxes_cxcywh[-1])
    with torch.no_grad():
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert torch.equal(output.logits, record.logits[-1]) and torch.equal(output.pred_boxes, record.boxes_cxcywh[-1])


def test_initial_boxes_cover_each_image_and_the_first_stage_starts_there():
    # Fresh model: box deltas are zero, so every stage predicts the initial box, the whole
    # real image (image 1 is only the left half of its canvas).
    model = tiny_adamixer().eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter_for(model)(pixel_values, pixel_mask)
    whole_images = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0]])  # per image, cxcywh on the canvas
    assert torch.allclose(record.boxes_cxcywh, whole_images[None, :, None].expand(NUM_STAGES, 2, NUM_QUERIES, 4))


def test_decode_with_own_queries_reproduces_the_record_and_other_queries_get_gradients():
    model = tiny_adamixer(perturb=PERTURB).eval()
    adapter = adapter_for(model)
    record = adapter(*padded_batch())
    decoded = adapter.decode(record, adapter.learned_queries())
    assert torch.allclose(decoded.logits, record.logits, atol=1e-6)
    assert torch.allclose(decoded.boxes_cxcywh, record.boxes_cxcywh, atol=1e-6)
    assert torch.allclose(decoded.decoder_hidden, record.decoder_hidden, atol=1e-6)

    other = torch.randn(7, D_MODEL + 4, requires_grad=True)
    decoded = adapter.decode(record, other)
    assert decoded.logits.shape == (NUM_STAGES, 2, 7, 3) and decoded.boxes_cxcywh.shape == (NUM_STAGES, 2, 7, 4)
    (decoded.logits.sum() + decoded.boxes_cxcywh.sum()).backward()
    assert other.grad is not None and other.grad[:, D_MODEL:].abs().sum() > 0  # the boxes train too
    assert model.stages[0].sampling_offsets.weight.grad is not None
    assert all(p.grad is not None for p in backbone_module(model).encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.input_projections.parameters())


def test_forward_with_group_equals_separate_passes():
    model = tiny_adamixer(perturb=PERTURB).eval()
    adapter = adapter_for(model)
    pixel_values, pixel_mask = padded_batch()
    other = torch.randn(6, D_MODEL + 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        record, group = adapter.forward_with_group(pixel_values, pixel_mask, other)
        alone = adapter(pixel_values, pixel_mask)
        separate = adapter.decode(alone, other)
    assert torch.allclose(record.logits, alone.logits, atol=1e-4)
    assert torch.allclose(record.boxes_cxcywh, alone.boxes_cxcywh, atol=1e-4)
    assert torch.allclose(group.logits, separate.logits, atol=1e-4)
    assert torch.allclose(group.boxes_cxcywh, separate.boxes_cxcywh, atol=1e-4)


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_adamixer(perturb=PERTURB).eval()
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["model_type"] == "adamixer" and saved["num_stages"] == NUM_STAGES
    assert (tmp_path / "model" / "model.safetensors").is_file()
    loaded = load_detector(tmp_path)  # a run directory: its model/ folder is found
    assert isinstance(loaded, AdaMixerForObjectDetection)
    assert loaded.config == model.config and loaded.config.id2label == TINY_ID2LABEL
    loaded.eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        before, after = model(pixel_values, pixel_mask), loaded(pixel_values, pixel_mask)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.pred_boxes, after.pred_boxes)


def test_bad_configs_name_the_fields():
    with pytest.raises(ConfigError, match="n_groups"):
        build_detector(tiny_adamixer_config(adamixer_groups=3), TINY_ID2LABEL)
    with pytest.raises(ConfigError, match="out_features"):
        build_detector(tiny_adamixer_config(backbone=BackboneConfig(out_features=["stem"])), TINY_ID2LABEL)
    with pytest.raises(ValueError, match="unknown AdaMixer field"):
        AdaMixerConfig.from_dict({"model_type": "adamixer", "stages": 3})


def test_backbone_weights_load_and_backbone_gets_its_own_learning_rate():
    model = tiny_adamixer()
    config = resnet_config(tiny_adamixer_config().backbone)
    config.out_features = [config.stage_names[-1]]
    from transformers import ResNetBackbone

    torch.manual_seed(5)
    pretrained = ResNetBackbone(config).state_dict()
    load_backbone_weights(model, pretrained)
    assert torch.equal(backbone_module(model).state_dict()["embedder.embedder.convolution.weight"],
                       pretrained["embedder.embedder.convolution.weight"])
    # all_but_stem (the default): the stem is frozen, the rest trains.
    assert not backbone_module(model).embedder.embedder.convolution.weight.requires_grad
    optimizer = build_optimizer(model, RunConfig().train)
    backbone_ids = {id(p) for p in backbone_module(model).parameters() if p.requires_grad}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == backbone_ids
    assert not backbone_ids & {id(p) for p in optimizer.param_groups[0]["params"]}


# --- distillation ---------------------------------------------------------------------------------

TERMS = {"det_cls", "det_bbox", "det_giou", "ld_pos_cls", "ld_pos_box", "ld_neg_box", "fd", "ad_cls", "ad_bbox",
         "ad_giou"}


def distill_batch() -> dict:
    pixel_values, pixel_mask = padded_batch()
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.25, 0.5, 0.2, 0.4]])},
    ]
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


def make_teacher(family: str):
    """A wider teacher (64) with more queries (12) than the 32-wide, 10-query students."""
    if family == "adamixer":
        return tiny_adamixer(seed=1, perturb=0.05, d_model=64, num_queries=12)
    torch.manual_seed(1)
    config = make_tiny_model_config(family)
    config.d_model, config.num_queries = 64, 12
    teacher = build_detector(config, TINY_ID2LABEL)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return teacher


def make_student(family: str):
    if family == "adamixer":
        return tiny_adamixer(seed=2)
    torch.manual_seed(2)
    return build_detector(make_tiny_model_config(family), TINY_ID2LABEL)


@pytest.mark.parametrize(
    "teacher_family,student_family",
    [("adamixer", "adamixer"), ("deformable_detr", "adamixer"), ("adamixer", "conditional_detr")],
)
def test_every_distillation_loss_trains_the_student_not_the_teacher(teacher_family, student_family):
    teacher, student = make_teacher(teacher_family), make_student(student_family)
    objective = DETRDistillObjective(student, teacher, RunConfig())  # LD, FD and AD on
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(objective.heads.parameters()), lr=1e-3)
    terms = objective(distill_batch())
    assert TERMS <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["fd"] > 0 and terms["ld_neg_box"] > 0 and terms["ad_bbox"] > 0
    sum(terms.values()).backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(p.grad is not None for p in objective.heads.parameters())


# --- learning -------------------------------------------------------------------------------------


def test_a_tiny_adamixer_overfits_eight_images(shapes_dir):
    """8 val images of the tiny shapes set, trained on as one batch: AP >= 0.9 on them.

    About 300 steps, 20 s on one thread; the LR drops 10x for the last 20 % as the training loop does.
    """
    images = CocoDetection(shapes_dir, "val", transforms=build_transforms(False, 64))
    batch = collate_detection([images[i] for i in range(len(images))])
    assert len(images) == 8
    torch.manual_seed(0)
    config = RunConfig()
    config.model = tiny_adamixer_config(backbone=BackboneConfig(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], out_features=["stage2", "stage3", "stage4"], trainable="all"))
    model = build_detector(config.model, images.id2label)
    objective = DetectionObjective(model, config)
    steps, lr = 300, 2e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    first_loss = None
    for step in range(steps):
        if step == int(0.8 * steps):
            for group in optimizer.param_groups:
                group["lr"] = lr / 10
        loss = sum(objective(batch).values())
        first_loss = first_loss or loss.item()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert loss.item() < first_loss / 20
    metrics = evaluate_model(model, images, batch_size=8, progress=False)
    assert metrics["AP"] >= 0.9, metrics
