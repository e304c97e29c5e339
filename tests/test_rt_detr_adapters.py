"""RT-DETR (v1, v2) and D-FINE adapters: the DetrRecord agrees with transformers' own forward
pass, decode reproduces it from the query prior, and denoising queries stay out of it."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForObjectDetection

from detrdistill.data.collate import collate_detection
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import build_detector, load_detector
from detrdistill.models.label_sets import restrict_to_dataset_classes
from tests.conftest import PROPOSAL_FAMILIES, make_tiny_model_config
from tests.test_adapters import NUM_LABELS, PERTURB, labels_for_batch, padded_batch

FAMILIES = list(PROPOSAL_FAMILIES)
D_MODEL, NUM_QUERIES, DECODER_LAYERS = 32, 10, 3
QUERY_DIM = D_MODEL + 4  # content, then the inverse-sigmoid reference box
LEVEL_SHAPES = [(8, 8), (4, 4), (2, 2)]  # strides 8, 16, 32 on a 64 x 64 canvas


def perturbed(tiny_detector, family: str, **kwargs):
    """A tiny detector perturbed off its init. D-FINE gets half of PERTURB: at 0.2 its perturbed
    encoder (RepNCSPELAN blocks) makes decoder memory values of ~1e5, at which float32 rounding
    alone moves a query's outputs by 1e-3 between two equal computations."""
    return tiny_detector(family, perturb=PERTURB / 2 if family == "d_fine" else PERTURB, **kwargs)


def num_stages(family: str) -> int:
    """D-FINE adds its first guess (pre_bbox_head) before the decoder layers' stages."""
    return DECODER_LAYERS + 1 if family == "d_fine" else DECODER_LAYERS


def model_stages(output, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' intermediate outputs [B, K, T, ...] -> [K, B, T - skip, ...] (skip: denoising queries)."""
    return (output.intermediate_logits[:, :, skip:].transpose(0, 1),
            output.intermediate_reference_points[:, :, skip:].transpose(0, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_record_shapes_masks_proposals_and_query_prior(family, tiny_detector):
    model = perturbed(tiny_detector, family).eval()
    adapter = adapter_for(model)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)

    stages = num_stages(family)
    assert record.class_head == "sigmoid" and adapter.has_proposals and adapter.per_image_queries
    assert record.logits.shape == (stages, 2, NUM_QUERIES, NUM_LABELS)
    assert record.boxes_cxcywh.shape == (stages, 2, NUM_QUERIES, 4)
    assert ((record.boxes_cxcywh >= 0) & (record.boxes_cxcywh <= 1)).all()
    assert record.decoder_hidden.shape == (stages, 2, NUM_QUERIES, D_MODEL)
    assert record.level_shapes == LEVEL_SHAPES and adapter.num_feature_levels == 3
    for features, mask, inputs, (h, w) in zip(
        record.features, record.feature_masks, record.encoder_inputs, LEVEL_SHAPES, strict=True
    ):
        assert features.shape == inputs.shape == (2, D_MODEL, h, w)
        assert torch.equal(mask, F.interpolate(pixel_mask[None].float(), size=(h, w))[0].bool())
    assert not record.feature_masks[0][1, :, 4:].any() and record.feature_masks[0][1, :, :4].all()
    # FD's features are the decoder's memory: what its cross-attention reads, level by level.
    memory = torch.cat([f.flatten(2).transpose(1, 2) for f in record.features], 1)
    torch.testing.assert_close(memory, record.decoder_inputs["encoder_hidden_states"], atol=0, rtol=0)

    # The query prior: per image, the selected content then the initial boxes (inverse sigmoid).
    assert adapter.query_dim == QUERY_DIM
    assert record.query_embeddings.shape == (2, NUM_QUERIES, QUERY_DIM)
    torch.testing.assert_close(record.query_embeddings[..., D_MODEL:], output.init_reference_points, atol=0, rtol=0)
    with pytest.raises(NotImplementedError, match="per image"):
        adapter.learned_queries()

    # The encoder's top-k proposals, one stage apart from the decoder's.
    assert record.proposals.logits.shape == (1, 2, NUM_QUERIES, NUM_LABELS)
    torch.testing.assert_close(record.proposals.logits[0], output.enc_topk_logits, atol=0, rtol=0)
    torch.testing.assert_close(record.proposals.boxes_cxcywh[0], output.enc_topk_bboxes, atol=0, rtol=0)
    logits, boxes = record.detection_stages()
    assert logits.shape[0] == boxes.shape[0] == stages + 1 and torch.equal(boxes[0], record.proposals.boxes_cxcywh[0])
    assert record.denoising is None

    table = record.shape_table(strides=[8, 16, 32]).splitlines()
    assert f"| query_embeddings | [B, Q, D_q] | {[2, NUM_QUERIES, QUERY_DIM]} |" in table


@pytest.mark.parametrize("family", FAMILIES)
def test_last_stage_equals_model_output(family, tiny_detector):
    model = perturbed(tiny_detector, family).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        record = adapter_for(model)(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(record.logits[-1], output.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.boxes_cxcywh[-1], output.pred_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.decoder_hidden[-1], output.last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_equals_the_models_intermediate_outputs(family, tiny_detector):
    """In training mode transformers emits every stage (D-FINE's first guess included); in eval
    mode D-FINE emits only the last, which the adapter's own computation of all stages matches."""
    model = perturbed(tiny_detector, family).train()
    pixel_values, pixel_mask = padded_batch()
    adapter = adapter_for(model)
    with torch.no_grad():
        record = adapter(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        logits, boxes = model_stages(output)
        torch.testing.assert_close(record.logits, logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(record.boxes_cxcywh, boxes, atol=1e-6, rtol=0)
        model.eval()
        record = adapter(pixel_values, pixel_mask)
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    logits, boxes = model_stages(output)
    eval_stages = slice(-1, None) if family == "d_fine" else slice(None)
    torch.testing.assert_close(record.logits[eval_stages], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.boxes_cxcywh[eval_stages], boxes, atol=1e-6, rtol=0)
    assert not torch.allclose(record.boxes_cxcywh[0], record.boxes_cxcywh[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_with_the_records_query_prior_reproduces_the_record(family, tiny_detector):
    model = perturbed(tiny_detector, family).eval()
    adapter = adapter_for(model)
    with torch.no_grad():
        record = adapter(*padded_batch())
        decoded = adapter.decode(record, record.query_embeddings)
    torch.testing.assert_close(decoded.logits, record.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded.boxes_cxcywh, record.boxes_cxcywh, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded.decoder_hidden, record.decoder_hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_image", [False, True])
def test_decode_other_queries_shapes_and_gradients(family, per_image, tiny_detector):
    model = perturbed(tiny_detector, family).train()
    adapter = adapter_for(model)
    record = adapter(*padded_batch())
    shape = (2, 7, QUERY_DIM) if per_image else (7, QUERY_DIM)
    queries = torch.randn(shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    decoded = adapter.decode(record, queries)
    stages = num_stages(family)
    assert decoded.logits.shape == (stages, 2, 7, NUM_LABELS)
    assert decoded.boxes_cxcywh.shape == (stages, 2, 7, 4)
    assert decoded.decoder_hidden.shape == (stages, 2, 7, D_MODEL)
    assert not torch.allclose(decoded.boxes_cxcywh, record.boxes_cxcywh[:, :, :7])

    model.zero_grad(set_to_none=True)
    (decoded.boxes_cxcywh.sum() + decoded.logits.sum()).backward()
    decoder_weight = model.model.decoder.layers[0].self_attn.q_proj.weight
    encoder_weight = model.model.encoder.aifi[0].layers[0].self_attn.q_proj.weight  # the hybrid encoder's AIFI
    for weight in (decoder_weight, encoder_weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert queries.grad is not None and queries.grad[..., :D_MODEL].abs().sum() > 0
    assert queries.grad[..., D_MODEL:].abs().sum() > 0  # the boxes of a query prior train too
    with pytest.raises(ValueError, match="width"):
        adapter.decode(record, torch.zeros(7, D_MODEL))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_query_group_in_the_same_pass_equals_a_separate_decoder_pass(family, tiny_detector):
    model = perturbed(tiny_detector, family).eval()
    adapter = adapter_for(model)
    queries = torch.randn(2, 7, QUERY_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = adapter(*padded_batch())
        separate = adapter.decode(alone, queries)
        record, group = adapter.forward_with_group(*padded_batch(), queries)
    for name in ("logits", "boxes_cxcywh", "decoder_hidden"):
        torch.testing.assert_close(getattr(record, name), getattr(alone, name), atol=1e-5, rtol=0)
        torch.testing.assert_close(getattr(group, name), getattr(separate, name), atol=1e-5, rtol=0)
    torch.testing.assert_close(record.query_embeddings, alone.query_embeddings, atol=0, rtol=0)
    assert record.decoder_inputs.keys() == alone.decoder_inputs.keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_denoising_queries_stay_out_of_the_record(family, tiny_detector):
    """Training with targets: transformers prepends the denoising groups; the record holds the
    object queries alone (its stages equal transformers' after dn_num_split), the groups apart."""
    model = perturbed(tiny_detector, family).train()
    adapter = adapter_for(model)
    pixel_values, pixel_mask = padded_batch()
    labels = labels_for_batch()
    torch.manual_seed(3)  # the denoising noise
    record = adapter(pixel_values, pixel_mask, labels)
    torch.manual_seed(3)
    output = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    num_denoising, num_object = output.denoising_meta_values["dn_num_split"]
    assert num_denoising > 0 and num_object == NUM_QUERIES

    stages = num_stages(family)
    assert record.logits.shape == (stages, 2, NUM_QUERIES, NUM_LABELS)
    assert record.query_embeddings.shape == (2, NUM_QUERIES, QUERY_DIM)
    assert record.proposals.logits.shape == (1, 2, NUM_QUERIES, NUM_LABELS)
    logits, boxes = model_stages(output, skip=num_denoising)
    torch.testing.assert_close(record.logits, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.boxes_cxcywh, boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(record.query_embeddings[..., D_MODEL:],
                               output.init_reference_points[:, num_denoising:], atol=0, rtol=0)

    denoising = record.denoising
    dn_logits, dn_boxes = model_stages(output)
    assert denoising.logits.shape == (stages, 2, num_denoising, NUM_LABELS)
    torch.testing.assert_close(denoising.boxes_cxcywh, dn_boxes[:, :, :num_denoising], atol=1e-6, rtol=0)
    groups = output.denoising_meta_values["dn_num_group"]
    assert denoising.num_groups == groups
    for (queries, gts), target in zip(denoising.matches, labels, strict=True):
        assert len(queries) == len(gts) == groups * len(target["boxes"])
        assert gts.tolist() == list(range(len(target["boxes"]))) * groups
        assert (queries < num_denoising).all()

    # With a query group as well: [denoising, own, group], each behind its own mask.
    queries = torch.randn(2, 7, QUERY_DIM, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    grouped, group = adapter.forward_with_group(pixel_values, pixel_mask, queries, labels)
    for name in ("logits", "boxes_cxcywh", "decoder_hidden"):
        torch.testing.assert_close(getattr(grouped, name), getattr(record, name), atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped.denoising.boxes_cxcywh, denoising.boxes_cxcywh, atol=1e-5, rtol=0)
    separate = adapter.decode(record, queries)
    torch.testing.assert_close(group.boxes_cxcywh, separate.boxes_cxcywh, atol=1e-5, rtol=0)

    # Eval mode, or no denoising queries configured: no groups even with targets.
    with torch.no_grad():
        assert adapter_for(model.eval())(pixel_values, pixel_mask, labels).denoising is None


def test_without_denoising_queries_configured_there_are_none():
    config = make_tiny_model_config("rt_detr")
    config.num_denoising = 0
    model = build_detector(config, {0: "a", 1: "b", 2: "c"}).train()
    record = adapter_for(model)(*padded_batch(), labels_for_batch())
    assert record.denoising is None and record.logits.shape[2] == NUM_QUERIES


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(family, tiny_detector, tmp_path):
    model = perturbed(tiny_detector, family).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    model.config.anchor_image_size = [64, 64]  # as hub checkpoints may: load_detector lets other sizes in
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        for loaded in (AutoModelForObjectDetection.from_pretrained(tmp_path), load_detector(tmp_path)):
            assert type(loaded) is type(model)
            output = loaded.eval()(pixel_values=pixel_values, pixel_mask=pixel_mask)
            torch.testing.assert_close(output.logits, expected.logits, atol=0, rtol=0)
            torch.testing.assert_close(output.pred_boxes, expected.pred_boxes, atol=0, rtol=0)
        loaded = load_detector(tmp_path).eval()
        assert loaded.config.anchor_image_size is None
        assert adapter_for(loaded)(torch.randn(1, 3, 96, 64), torch.ones(1, 96, 64)).logits.shape[2] == NUM_QUERIES


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hub_label_set_is_restricted_in_every_class_head(family, tiny_detector):
    """The class heads, the encoder's proposal scores and the denoising label embedding all
    shrink to the dataset's classes; the kept classes' scores are the same rows."""
    hub_labels = {i: f"coco{i}" for i in range(80)}
    hub_labels.update({5: "circle", 17: "square", 60: "triangle"})
    model = perturbed(tiny_detector, family, id2label=hub_labels)
    before = model.model.enc_score_head.weight[[5, 17, 60]].clone()
    restricted = restrict_to_dataset_classes(model, {0: "circle", 1: "square", 2: "triangle"}, "hub")
    assert restricted.model.enc_score_head.out_features == 3
    assert torch.equal(restricted.model.enc_score_head.weight, before)
    assert all(head.out_features == 3 for head in restricted.model.decoder.class_embed)
    embedding = restricted.model.denoising_class_embed
    assert embedding.num_embeddings == 4 and embedding.padding_idx == 3
    assert restricted.config.num_labels == 3
    record = adapter_for(restricted.train())(*padded_batch(), labels_for_batch())
    assert record.logits.shape[-1] == record.proposals.logits.shape[-1] == record.denoising.logits.shape[-1] == 3


def test_unsupported_configurations_are_refused(tiny_detector):
    model = tiny_detector("d_fine")
    model.config.eval_idx = 1
    with pytest.raises(ValueError, match="eval_idx"):
        adapter_for(model)
    model = tiny_detector("rt_detr")
    model.config.learn_initial_query = True
    with pytest.raises(ValueError, match="learn_initial_query"):
        adapter_for(model)


def test_batches_are_padded_to_the_coarsest_stride(tiny_detector):
    """RT-DETR's FPN doubles each level onto the next finer one, so the canvas must be a multiple
    of its coarsest stride: collate_detection pads up to adapter.size_divisor, boxes following."""
    model = tiny_detector("rt_detr").eval()
    adapter = adapter_for(model)
    assert adapter.size_divisor == 32 and adapter_for(tiny_detector("conditional_detr")).size_divisor == 1
    items = [(torch.rand(3, 50, 70), {"boxes_xyxy_abs": torch.tensor([[10.0, 10.0, 30.0, 40.0]]),
                                      "class_labels": torch.tensor([1]), "image_id": 1, "orig_size": (50, 70)}),
             (torch.rand(3, 64, 40), {"boxes_xyxy_abs": torch.zeros(0, 4), "class_labels": torch.zeros(0),
                                      "image_id": 2, "orig_size": (64, 40)})]
    batch = collate_detection(items, adapter.size_divisor)
    assert batch["padded_size"] == (64, 96) and batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["pixel_mask"][0, :50, :70].all() and not batch["pixel_mask"][0, 50:].any()
    torch.testing.assert_close(batch["labels"][0]["boxes"], torch.tensor([[20 / 96, 25 / 64, 20 / 96, 30 / 64]]))
    with torch.no_grad():
        assert adapter(batch["pixel_values"], batch["pixel_mask"]).logits.shape[2] == NUM_QUERIES
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            unpadded = collate_detection(items)
            adapter(unpadded["pixel_values"], unpadded["pixel_mask"])
