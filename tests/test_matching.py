"""Hungarian matching: known optima, empty images, more targets than queries, brute force."""

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import HungarianMatcher as TransformersHungarianMatcher

from detrdistill.matching import HungarianMatcher, solve_assignments, solve_each

NUM_CLASSES = 3


def box(cx: float, cy: float = 0.5, w: float = 0.2, h: float = 0.2) -> list[float]:
    return [cx, cy, w, h]


def uniform_logits(num_queries: int, class_head: str) -> torch.Tensor:
    """Logits that favour no class: the class cost is the same for every query."""
    columns = NUM_CLASSES + 1 if class_head == "softmax" else NUM_CLASSES
    return torch.zeros(num_queries, columns)


# Targets A (cx 0.3) and B (cx 0.5); all boxes 0.2 x 0.2 at cy 0.5. With d the centre distance,
# L1 = d and GIoU = (0.2 - d) / (0.2 + d), so every cost grows with d:
#   query 0 at 0.38: d(A) = 0.08, d(B) = 0.12
#   query 1 at 0.20: d(A) = 0.10, d(B) = 0.30
#   query 2 at 0.90: d(A) = 0.60, d(B) = 0.40
# Greedy (take the cheapest pair first) gives query 0 -> A, then query 1 -> B: total cost
# 5 * 0.38 - 2 * (0.12 / 0.28 - 0.1 / 0.5) = 1.44. The optimum is query 1 -> A and query 0 -> B:
# 5 * 0.22 - 2 * (0.1 / 0.3 + 0.08 / 0.32) = -0.07.
GREEDY_TRAP_QUERIES = [box(0.38), box(0.20), box(0.90)]
GREEDY_TRAP_TARGETS = {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([box(0.3), box(0.5)])}
GREEDY_TRAP_OPTIMUM = ([0, 1], [1, 0])  # (query indices, target indices), queries ascending


def class_decides_case(class_head: str) -> tuple[torch.Tensor, torch.Tensor, dict, tuple]:
    """Queries 0 and 1 share one box and both targets share it too: only the class can decide.
    Query 0 is confident in class 2, query 1 in class 0; the targets are [class 0, class 2]."""
    logits = uniform_logits(3, class_head) - 4.0
    logits[0, 2] = 4.0
    logits[1, 0] = 4.0
    boxes = torch.tensor([box(0.5), box(0.5), box(0.95, w=0.05, h=0.05)])
    targets = {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([box(0.5), box(0.5)])}
    return logits, boxes, targets, ([0, 1], [1, 0])


def as_lists(indices) -> list[tuple[list[int], list[int]]]:
    return [(rows.tolist(), cols.tolist()) for rows, cols in indices]


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_known_optimum_beats_greedy(class_head):
    matcher = HungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, class_head=class_head)
    logits = uniform_logits(3, class_head)[None]
    boxes = torch.tensor(GREEDY_TRAP_QUERIES)[None]
    indices = matcher(logits, boxes, [GREEDY_TRAP_TARGETS])
    assert as_lists(indices) == [GREEDY_TRAP_OPTIMUM]
    for rows, cols in indices:
        assert rows.dtype == cols.dtype == torch.int64


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_batch_with_empty_image_and_class_decided_match(class_head):
    """Three images in one batch (2, 0 and 2 targets): each is solved on its own block and
    returns target indices local to its image."""
    matcher = HungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, class_head=class_head)
    class_logits, class_boxes, class_targets, class_optimum = class_decides_case(class_head)
    logits = torch.stack([uniform_logits(3, class_head), uniform_logits(3, class_head), class_logits])
    boxes = torch.stack([torch.tensor(GREEDY_TRAP_QUERIES), torch.tensor(GREEDY_TRAP_QUERIES), class_boxes])
    empty = {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    indices = matcher(logits, boxes, [GREEDY_TRAP_TARGETS, empty, class_targets])
    assert as_lists(indices) == [GREEDY_TRAP_OPTIMUM, ([], []), class_optimum]
    assert indices[1][0].dtype == indices[1][1].dtype == torch.int64


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_all_images_empty(class_head):
    matcher = HungarianMatcher(class_head=class_head)
    empty = {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    indices = matcher(
        uniform_logits(3, class_head)[None].repeat(2, 1, 1), torch.rand(2, 3, 4) * 0.5 + 0.2, [empty, empty]
    )
    assert len(indices) == 2
    for rows, cols in indices:
        assert rows.numel() == cols.numel() == 0 and rows.dtype == torch.int64


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_more_targets_than_queries(class_head):
    """Two queries, four targets: every query is matched, to the target it sits on."""
    matcher = HungarianMatcher(class_head=class_head)
    targets = {
        "class_labels": torch.tensor([0, 1, 2, 0]),
        "boxes": torch.tensor([box(0.2, 0.2), box(0.4, 0.7), box(0.6, 0.3), box(0.8, 0.8)]),
    }
    boxes = torch.tensor([box(0.8, 0.8), box(0.4, 0.7)])[None]
    indices = matcher(uniform_logits(2, class_head)[None], boxes, [targets])
    assert as_lists(indices) == [([0, 1], [3, 1])]


def brute_force(cost: torch.Tensor) -> tuple[float, list[tuple[int, int]]]:
    """Cheapest one-to-one assignment of min(Q, n) pairs in cost [Q, n], by enumeration."""
    num_queries, num_targets = cost.shape
    best, best_pairs = float("inf"), None
    if num_targets <= num_queries:
        for chosen in itertools.permutations(range(num_queries), num_targets):
            pairs = sorted((q, t) for t, q in enumerate(chosen))
            total = sum(float(cost[q, t]) for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    else:
        for chosen in itertools.permutations(range(num_targets), num_queries):
            pairs = list(enumerate(chosen))
            total = sum(float(cost[q, t]) for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    return best, best_pairs


@pytest.mark.parametrize("num_queries, sizes", [(4, [3]), (5, [5]), (3, [4]), (4, [2, 0, 4, 1]), (2, [3, 1])])
def test_solve_assignments_equals_brute_force(num_queries, sizes):
    generator = torch.Generator().manual_seed(sum(sizes) * 10 + num_queries)
    cost = torch.rand(len(sizes), num_queries, sum(sizes), generator=generator)
    indices = solve_assignments(cost, sizes)
    assert len(indices) == len(sizes)
    offset = 0
    for image, (size, (rows, cols)) in enumerate(zip(sizes, indices, strict=True)):
        block = cost[image, :, offset : offset + size]
        offset += size
        expected_total, expected_pairs = brute_force(block)
        pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
        assert len(pairs) == min(num_queries, size)
        assert sorted(pairs) == expected_pairs
        if pairs:
            assert float(block[rows, cols].sum()) == pytest.approx(expected_total, rel=1e-6)


def test_solve_assignments_avoids_non_finite_costs():
    cost = torch.tensor([[[float("nan"), 0.5], [float("inf"), 0.7], [3.0, 0.1]]])
    rows, cols = solve_assignments(cost, [2])[0]
    # Query 2 must take target 0 (the other queries' costs for it are nan / inf).
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (2, 0)]


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_matches_transformers_matchers_on_random_predictions(class_head):
    """Same costs as transformers' DETR (softmax) and Deformable DETR (focal) matchers."""
    generator = torch.Generator().manual_seed(0)
    batch, num_queries = 3, 12
    columns = NUM_CLASSES + 1 if class_head == "softmax" else NUM_CLASSES
    logits = torch.randn(batch, num_queries, columns, generator=generator) * 2
    boxes = torch.cat(
        [
            torch.rand(batch, num_queries, 2, generator=generator) * 0.6 + 0.2,
            torch.rand(batch, num_queries, 2, generator=generator) * 0.3 + 0.05,
        ],
        dim=-1,
    )
    targets = []
    for size in (5, 0, 9):
        centres = torch.rand(size, 2, generator=generator) * 0.6 + 0.2
        sides = torch.rand(size, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(NUM_CLASSES, (size,), generator=generator)
        targets.append({"class_labels": labels, "boxes": torch.cat([centres, sides], dim=-1)})
    ours = HungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, class_head=class_head)
    reference_class = TransformersHungarianMatcher if class_head == "softmax" else DeformableDetrHungarianMatcher
    reference = reference_class(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
    expected = reference({"logits": logits, "pred_boxes": boxes}, targets)
    assert as_lists(ours(logits, boxes, targets)) == as_lists(expected)


def test_solve_each_on_several_threads_equals_one_by_one_scipy():
    generator = torch.Generator().manual_seed(3)
    costs = [torch.rand(30, 30, generator=generator) for _ in range(7)] + [torch.rand(5, 9, generator=generator)]
    costs[2][4, :] = float("nan")  # a row the solver must avoid, not fail on
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        solved = solve_each(costs)
    finally:
        torch.set_num_threads(threads)
    for cost, (rows, cols) in zip(costs, solved, strict=True):
        expected_rows, expected_cols = linear_sum_assignment(torch.nan_to_num(cost, nan=1e8).numpy())
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()
        assert rows.dtype == cols.dtype == torch.int64
