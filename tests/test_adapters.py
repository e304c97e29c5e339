"""Family adapters: the DetrRecord they build agrees with transformers' own forward pass."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForObjectDetection, ResNetBackbone

from detrdistill.config import BackboneConfig
from detrdistill.models.adapters import adapter_for
from detrdistill.models.adapters import base as adapter_base
from detrdistill.models.build import (
    backbone_module,
    load_backbone_weights,
    load_detector,
    resnet_config,
    set_backbone_trainable,
)

FAMILIES = ["detr", "conditional_detr", "deformable_detr"]
NUM_LABELS = 3  # conftest.TINY_ID2LABEL
D_MODEL, NUM_QUERIES, NUM_STAGES = 32, 10, 3
PADDED_WIDTH = 32  # image 1 of the batch is real only in its left half
# Spread the freshly initialised heads apart so that equal boxes mean something (see conftest).
PERTURB = 0.2


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64x64 canvases; the second image is 64 high x 32 wide, zero-padded on the right."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, PADDED_WIDTH:] = 0
    pixel_values[1, :, :, PADDED_WIDTH:] = 0
    return pixel_values, pixel_mask


def labels_for_batch() -> list[dict]:
    return [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.25, 0.5, 0.2, 0.4]])},
    ]


def num_columns(family: str) -> int:
    return NUM_LABELS + 1 if family == "detr" else NUM_LABELS


@pytest.mark.parametrize("family", FAMILIES)
def test_record_shapes_masks_and_ranges(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).eval()
    adapter = adapter_for(model)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter(pixel_values, pixel_mask)

    assert record.class_head == ("softmax" if family == "detr" else "sigmoid")
    assert record.num_stages == NUM_STAGES
    assert record.logits.shape == (NUM_STAGES, 2, NUM_QUERIES, num_columns(family))
    assert record.boxes_cxcywh.shape == (NUM_STAGES, 2, NUM_QUERIES, 4)
    assert ((record.boxes_cxcywh >= 0) & (record.boxes_cxcywh <= 1)).all()
    assert record.decoder_hidden.shape == (NUM_STAGES, 2, NUM_QUERIES, D_MODEL)

    # stride 16 -> 4x4; Deformable adds stride 32 (2x2) and an extra strided conv level (1x1).
    expected_shapes = [(4, 4), (2, 2), (1, 1)] if family == "deformable_detr" else [(4, 4)]
    assert record.level_shapes == expected_shapes
    assert len(record.features) == len(record.feature_masks) == len(record.encoder_inputs) == len(expected_shapes)
    for features, mask, inputs, (h, w) in zip(
        record.features, record.feature_masks, record.encoder_inputs, expected_shapes, strict=True
    ):
        assert features.shape == (2, D_MODEL, h, w)
        assert inputs.shape == (2, D_MODEL, h, w)
        assert mask.shape == (2, h, w) and mask.dtype == torch.bool
        # The mask is the pixel mask downsampled (nearest) to the level: False over the padding.
        expected = F.interpolate(pixel_mask[None].float(), size=(h, w))[0].bool()
        assert torch.equal(mask, expected)
        assert mask[0].all()
    # The padded right half of image 1 is masked out on the stride-16 and stride-32 levels.
    assert not record.feature_masks[0][1, :, 2:].any() and record.feature_masks[0][1, :, :2].all()
    if family == "deformable_detr":
        assert not record.feature_masks[1][1, :, 1:].any() and record.feature_masks[1][1, :, :1].all()

    query_width = 2 * D_MODEL if family == "deformable_detr" else D_MODEL
    assert record.query_embeddings.shape == (NUM_QUERIES, query_width)
    assert record.query_embeddings is adapter.learned_queries()

    # The notebooks' table of the record: a line per field and level, with the shapes just checked.
    table = record.shape_table(strides=[16, 32, 64][: len(expected_shapes)]).splitlines()
    assert f"| logits | [K, B, Q, C] | {[NUM_STAGES, 2, NUM_QUERIES, num_columns(family)]} |" in table
    assert f"| query_embeddings | [Q, D_q] | {[NUM_QUERIES, query_width]} |" in table
    for level, (h, w) in enumerate(expected_shapes):
        stride = [16, 32, 64][level]
        assert f"| features (level {level}, stride {stride}) | [B, D, H_l, W_l] | {[2, D_MODEL, h, w]} |" in table
    assert sum(line.startswith("| encoder_inputs") for line in table) == len(expected_shapes)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_stage_equals_model_output(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter_for(model)(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(record.logits[-1], output.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.boxes_cxcywh[-1], output.pred_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.decoder_hidden[-1], output.last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediate_stages_equal_transformers_auxiliary_outputs(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter_for(model)(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels_for_batch())
    assert len(output.auxiliary_outputs) == NUM_STAGES - 1
    for stage, auxiliary in enumerate(output.auxiliary_outputs):
        torch.testing.assert_close(record.logits[stage], auxiliary["logits"], atol=1e-6, rtol=0)
        torch.testing.assert_close(record.boxes_cxcywh[stage], auxiliary["pred_boxes"], atol=1e-6, rtol=0)
    # The stages really differ from each other (not the last stage repeated).
    assert not torch.allclose(record.boxes_cxcywh[0], record.boxes_cxcywh[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_with_learned_queries_reproduces_the_record(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).eval()
    adapter = adapter_for(model)
    with torch.no_grad():
        record = adapter(*padded_batch())
        decoded = adapter.decode(record, adapter.learned_queries())
    torch.testing.assert_close(decoded.logits, record.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded.boxes_cxcywh, record.boxes_cxcywh, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded.decoder_hidden, record.decoder_hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_other_queries_shapes_and_gradients(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).train()
    adapter = adapter_for(model)
    record = adapter(*padded_batch())
    query_width = record.query_embeddings.shape[1]
    queries = torch.randn(7, query_width, generator=torch.Generator().manual_seed(1), requires_grad=True)
    decoded = adapter.decode(record, queries)

    assert decoded.logits.shape == (NUM_STAGES, 2, 7, num_columns(family))
    assert decoded.boxes_cxcywh.shape == (NUM_STAGES, 2, 7, 4)
    assert decoded.decoder_hidden.shape == (NUM_STAGES, 2, 7, D_MODEL)
    # Other queries give other boxes than the model's own.
    assert not torch.allclose(decoded.boxes_cxcywh[:, :, :7], record.boxes_cxcywh[:, :, :7])

    model.zero_grad(set_to_none=True)
    decoded.boxes_cxcywh.sum().backward()
    decoder_weight = model.model.decoder.layers[0].mlp.fc1.weight
    encoder_weight = model.model.encoder.layers[0].mlp.fc1.weight
    for weight in (decoder_weight, encoder_weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert queries.grad is not None and queries.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_query_group_in_the_same_pass_equals_a_separate_decoder_pass(family, tiny_detector):
    model = tiny_detector(family, perturb=PERTURB).eval()
    adapter = adapter_for(model)
    query_width = adapter.learned_queries().shape[1]
    queries = torch.randn(7, query_width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = adapter(*padded_batch())
        separate = adapter.decode(alone, queries)
        record, group = adapter.forward_with_group(*padded_batch(), queries)
    # The mask keeps the groups apart: neither group changes what the other computes.
    for name in ("logits", "boxes_cxcywh", "decoder_hidden"):
        torch.testing.assert_close(getattr(record, name), getattr(alone, name), atol=1e-5, rtol=0)
        torch.testing.assert_close(getattr(group, name), getattr(separate, name), atol=1e-5, rtol=0)
    assert record.decoder_inputs.keys() == alone.decoder_inputs.keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_query_set_per_image_works_as_one_shared_set(family, tiny_detector):
    """A query prior per image [B, Q', D_q] (an RT-DETR teacher's) decodes, alone or as a group,
    like the same queries shared [Q', D_q]; and each image's own set is used for that image."""
    model = tiny_detector(family, perturb=PERTURB).eval()
    adapter = adapter_for(model)
    shared = torch.randn(7, adapter.query_dim, generator=torch.Generator().manual_seed(1))
    per_image = torch.stack([shared, shared.flip(0)])
    with torch.no_grad():
        record = adapter(*padded_batch())
        alone = adapter.decode(record, shared)
        decoded = adapter.decode(record, per_image)
        _, group = adapter.forward_with_group(*padded_batch(), per_image)
    torch.testing.assert_close(decoded.boxes_cxcywh[:, 0], alone.boxes_cxcywh[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded.boxes_cxcywh[:, 1], alone.boxes_cxcywh[:, 1].flip(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(group.boxes_cxcywh, decoded.boxes_cxcywh, atol=1e-5, rtol=0)


def test_without_the_group_mask_the_groups_would_interact(tiny_detector, monkeypatch):
    """Guards the test above: a shared pass with no mask gives the own queries other outputs."""
    model = tiny_detector("conditional_detr", perturb=PERTURB).eval()
    adapter = adapter_for(model)
    queries = torch.randn(7, D_MODEL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = adapter(*padded_batch())
        monkeypatch.setattr(adapter_base, "group_attention_mask", lambda sizes, dtype, device: None)
        record, _ = adapter.forward_with_group(*padded_batch(), queries)
    assert not torch.allclose(record.boxes_cxcywh, alone.boxes_cxcywh, atol=1e-4)


def test_group_attention_mask_blocks_across_groups_only():
    mask = adapter_base.group_attention_mask([2, 1], torch.float32, torch.device("cpu"))
    blocked = mask[0, 0] < -1e30
    assert blocked.tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    assert mask[0, 0][~blocked].eq(0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(family, tiny_detector, tmp_path):
    model = tiny_detector(family, perturb=PERTURB).eval()
    model.save_pretrained(tmp_path)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        for loaded in (AutoModelForObjectDetection.from_pretrained(tmp_path), load_detector(tmp_path)):
            assert type(loaded) is type(model)
            assert loaded.config.id2label == model.config.id2label
            output = loaded.eval()(pixel_values=pixel_values, pixel_mask=pixel_mask)
            torch.testing.assert_close(output.logits, expected.logits, atol=0, rtol=0)
            torch.testing.assert_close(output.pred_boxes, expected.pred_boxes, atol=0, rtol=0)


def test_load_detector_without_config_json_explains(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json") as error:
        load_detector(tmp_path)
    assert "save_pretrained" in str(error.value) and str(tmp_path) in str(error.value)


def test_set_backbone_trainable(tiny_detector):
    model = tiny_detector("conditional_detr")
    named = list(backbone_module(model).named_parameters())
    stem = [p for n, p in named if n.startswith("embedder.")]
    stages = [p for n, p in named if not n.startswith("embedder.")]
    assert stem and stages

    # build_detector applies the config's default, "all_but_stem".
    assert not any(p.requires_grad for p in stem) and all(p.requires_grad for p in stages)
    set_backbone_trainable(model, "none")
    assert not any(p.requires_grad for _, p in named)
    # The transformer and heads are untouched by the backbone setting.
    assert all(p.requires_grad for p in model.model.encoder.parameters())
    set_backbone_trainable(model, "all")
    assert all(p.requires_grad for _, p in named)
    set_backbone_trainable(model, "all_but_stem")
    assert not any(p.requires_grad for p in stem) and all(p.requires_grad for p in stages)
    set_backbone_trainable(model, "all_but_stem_and_stage1")  # DETR's choice for an ImageNet ResNet
    stage1 = [p for n, p in named if n.startswith("encoder.stages.0.")]
    later = [p for n, p in named if n.startswith(("encoder.stages.1.", "encoder.stages.2.", "encoder.stages.3."))]
    assert stage1 and later and len(stem) + len(stage1) + len(later) == len(named)
    assert not any(p.requires_grad for p in stem + stage1) and all(p.requires_grad for p in later)
    with pytest.raises(ValueError, match="trainable"):
        set_backbone_trainable(model, "stem_only")


def _random_backbone_state(backbone: BackboneConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = ResNetBackbone(resnet_config(backbone)).state_dict()
    # Randomise everything, BatchNorm statistics included, so that a copy is recognisable.
    return {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in state.items()}


def test_load_backbone_weights_copies_and_rejects_other_architectures(tiny_detector, tiny_model_config):
    model = tiny_detector("conditional_detr")
    backbone = tiny_model_config("conditional_detr").backbone
    state = _random_backbone_state(backbone, seed=5)
    load_backbone_weights(model, state)
    loaded = backbone_module(model).state_dict()
    copied = [k for k in state if not k.endswith("num_batches_tracked")]
    assert copied and all(torch.equal(loaded[k], state[k]) for k in copied)

    deeper = BackboneConfig(**{**vars(backbone), "depths": [2, 1, 1, 1]})
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_weights(model, _random_backbone_state(deeper, seed=6))
    wider = BackboneConfig(**{**vars(backbone), "hidden_sizes": [8, 16, 32, 128]})
    # torch itself rejects shape mismatches (RuntimeError); either way nothing silently loads.
    with pytest.raises((ValueError, RuntimeError)):
        load_backbone_weights(model, _random_backbone_state(wider, seed=7))
