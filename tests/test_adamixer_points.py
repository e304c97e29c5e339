"""analysis/adamixer_points: the sampling points read by hooks are the ones the model samples."""

import numpy as np
import pytest
import torch

from detrdistill.analysis import adamixer_points
from detrdistill.models.adamixer import modeling
from tests.test_adamixer import GROUPS, NUM_QUERIES, NUM_STAGES, POINTS, distill_batch, tiny_adamixer


def batch_with_sizes() -> dict:
    batch = distill_batch()
    batch["padded_size"] = tuple(batch["pixel_values"].shape[-2:])
    batch["meta"] = [{"size": (64, 64)}, {"size": (64, 32)}]
    return batch


def test_hooked_points_are_the_points_the_last_stage_samples(monkeypatch):
    model = tiny_adamixer(perturb=0.05)
    batch = batch_with_sizes()
    sampled_points = []
    real_sample_3d = modeling.sample_3d

    def recording_sample_3d(maps, strides, points, tau):
        sampled_points.append(points.detach().clone())
        return real_sample_3d(maps, strides, points, tau)

    monkeypatch.setattr(modeling, "sample_3d", recording_sample_3d)
    result = adamixer_points.stage_points(model, batch)

    assert len(sampled_points) == NUM_STAGES
    last = sampled_points[-1]  # [B, Q, G, P, 3]
    assert result.points.shape == (2, NUM_QUERIES, GROUPS * POINTS, 3)
    torch.testing.assert_close(result.points, last.flatten(2, 3))
    first = adamixer_points.stage_points(model, batch, stage=0)
    torch.testing.assert_close(first.points, sampled_points[0].flatten(2, 3))
    assert not torch.allclose(first.points, result.points)
    torch.testing.assert_close(result.level_weights.sum(-1), torch.ones(2, NUM_QUERIES, GROUPS * POINTS))
    record = model(batch["pixel_values"], batch["pixel_mask"])
    torch.testing.assert_close(result.boxes_cxcywh, record.pred_boxes)
    assert model.training  # left as it was found


def test_share_inside_box_by_hand():
    points = np.array([[1.0, 1.0], [5.0, 5.0], [2.0, 9.0], [3.0, 3.0]])
    assert adamixer_points.share_inside_box(points, np.array([0.0, 0.0, 4.0, 4.0])) == 0.5
    assert adamixer_points.share_inside_box(points, np.array([10.0, 10.0, 12.0, 12.0])) == 0.0


def test_active_region_figure_and_one_share_per_matched_object():
    model = tiny_adamixer(perturb=0.05)
    batch = batch_with_sizes()
    sampled = adamixer_points.stage_points(model, batch)
    matches = adamixer_points.matched_queries(sampled, batch["labels"])
    assert [len(q) for q, _ in matches] == [2, 1]  # every GT object gets a query (10 queries >= 2 objects)
    shares = adamixer_points.inside_shares(sampled, batch, matches)
    assert len(shares) == 3 and all(0.0 <= share <= 1.0 for share in shares)
    query, target = int(matches[1][0][0]), int(matches[1][1][0])
    box = batch["labels"][1]["boxes"][target] * 64  # cx, cy, w, h in pixels of the 64 x 64 canvas
    xy = sampled.points[1, query, :, :2]
    inside = ((xy[:, 0] - box[0]).abs() <= box[2] / 2) & ((xy[:, 1] - box[1]).abs() <= box[3] / 2)
    assert shares[2] == pytest.approx(inside.float().mean().item())
    assert len(adamixer_points.plot_active_regions(sampled, batch, matches).axes) == 4


def test_level_by_box_size_reads_strides_within_the_maps():
    sampled = adamixer_points.stage_points(tiny_adamixer(perturb=0.05), batch_with_sizes())
    side, stride = adamixer_points.level_by_box_size(sampled, min_score=0.0)
    assert side.shape == stride.shape == (2 * NUM_QUERIES,)
    assert stride.min() >= min(sampled.strides) and stride.max() <= max(sampled.strides)
    assert adamixer_points.plot_level_by_box_size(sampled, canvas_side=64, min_score=0.0).axes


def test_stage_points_refuses_other_families(tiny_detector):
    with pytest.raises(TypeError, match="AdaMixerForObjectDetection"):
        adamixer_points.stage_points(tiny_detector, batch_with_sizes())


def test_level_plot_of_a_model_without_confident_queries_says_so():
    sampled = adamixer_points.stage_points(tiny_adamixer(), batch_with_sizes())  # focal init: scores ~0.01
    figure = adamixer_points.plot_level_by_box_size(sampled, canvas_side=64, min_score=0.5)
    assert "no query scores >= 0.5" in [text.get_text() for text in figure.axes[0].texts]
