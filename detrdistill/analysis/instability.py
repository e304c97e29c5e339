"""Instability (IS) of the bipartite assignment between decoder stages (paper section 6, Fig. 7).

For decoder stage k every prediction n gets the index of the ground-truth box it is
Hungarian-matched to, or -1:

    V^k_n = m if O^k_n matches T_m, else -1
    IS^k  = sum_n 1(V^k_n != V^{k+1}_n)                  (one count per stage pair k, k+1)

averaged over validation images. A well-trained detector keeps each object on the same
query from stage to stage (low IS); a young student hands objects from query to query.
Each stage is matched on its own, with the same ``HungarianMatcher`` and costs the detector
was trained with. Images without ground truth count with IS = 0 (nothing can change).

The pure functions work on match indices; ``instability`` runs a model over a dataset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from detrdistill.config import LossConfig
from detrdistill.data.collate import collate_detection
from detrdistill.matching import HungarianMatcher, MatchIndices
from detrdistill.models.adapters import adapter_for
from detrdistill.runs import eval_dataset, load_run

UNMATCHED = -1


def assignment_vector(query_indices: torch.Tensor, gt_indices: torch.Tensor, num_queries: int) -> torch.Tensor:
    """V for one image and stage: matched (query, GT) index pairs [P], [P] -> [num_queries]
    int64 holding each query's GT index, or -1 for unmatched queries."""
    if len(query_indices) != len(gt_indices):
        raise ValueError(f"{len(query_indices)} query indices but {len(gt_indices)} GT indices: pass matched pairs")
    vector = torch.full((num_queries,), UNMATCHED, dtype=torch.int64)
    vector[torch.as_tensor(query_indices, dtype=torch.int64)] = torch.as_tensor(gt_indices, dtype=torch.int64)
    return vector


def stage_changes(assignments: torch.Tensor) -> torch.Tensor:
    """IS^k for every stage pair: assignments [K, N] (V^1..V^K) -> [K - 1] int64 counts of
    predictions whose assignment differs between stage k and k + 1."""
    if assignments.dim() != 2 or assignments.shape[0] < 2:
        raise ValueError(f"need assignments [K >= 2, N], got shape {tuple(assignments.shape)}")
    return (assignments[:-1] != assignments[1:]).sum(-1)


def instability_from_matches(stage_matches: list[MatchIndices], num_queries: int) -> torch.Tensor:
    """IS per image and stage pair from per-stage matches.

    Args:
        stage_matches: K entries (decoder stages), each a per-image list of (query indices,
            GT indices), as ``HungarianMatcher`` returns.
        num_queries: N, predictions per image.

    Returns:
        [B, K - 1] int64.
    """
    num_images = len(stage_matches[0])
    if any(len(matches) != num_images for matches in stage_matches):
        raise ValueError(f"every stage needs matches for the same {num_images} images")
    per_image = []
    for image in range(num_images):
        assignments = torch.stack(
            [assignment_vector(*matches[image], num_queries=num_queries) for matches in stage_matches]
        )
        per_image.append(stage_changes(assignments))
    return torch.stack(per_image) if per_image else torch.zeros(0, len(stage_matches) - 1, dtype=torch.int64)


@dataclass
class InstabilityResult:
    """IS of one model over a set of images.

    Attributes:
        per_pair: [K - 1] mean IS^k over the images (pair k compares stages k + 1 and k + 2, 1-based).
        per_image: [I, K - 1] IS^k of every image.
        num_queries: N, predictions per image.
        label: a name for plots and tables.
    """

    per_pair: list[float]
    per_image: list[list[int]] = field(repr=False)
    num_queries: int
    label: str = ""

    @property
    def num_images(self) -> int:
        return len(self.per_image)

    @property
    def pair_names(self) -> list[str]:
        """"1-2", "2-3", ... (1-based decoder stages)."""
        return [f"{k + 1}-{k + 2}" for k in range(len(self.per_pair))]

    @property
    def mean(self) -> float:
        """IS averaged over stage pairs too (one number per model)."""
        return sum(self.per_pair) / max(len(self.per_pair), 1)

    def to_dict(self) -> dict:
        return {"label": self.label, "per_pair": self.per_pair, "pairs": self.pair_names, "mean": self.mean,
                "num_images": self.num_images, "num_queries": self.num_queries}


@torch.no_grad()
def match_every_stage(adapter, matcher: HungarianMatcher, batch: dict, device: str | torch.device = "cpu"
                      ) -> tuple[list[MatchIndices], int]:
    """A model's own Hungarian match to GT at each of its K decoder stages on a collated batch
    -> (K per-image matches, Q predictions per image). The model is run as it is (eval mode is
    the caller's); matching runs on the CPU."""
    record = adapter(batch["pixel_values"].to(device), batch["pixel_mask"].to(device))
    logits, boxes = record.logits.float().cpu(), record.boxes_cxcywh.float().cpu()
    return [matcher(logits[k], boxes[k], batch["labels"]) for k in range(record.num_stages)], logits.shape[2]


@torch.no_grad()
def instability(
    model,
    dataset,
    loss: LossConfig | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    label: str = "",
    device: str | torch.device = "cpu",
) -> InstabilityResult:
    """IS of ``model`` over the first ``max_images`` images of ``dataset`` (all when None).

    Args:
        model: a transformers DETR-family detector (any family with an adapter).
        dataset: a ``CocoDetection`` with deterministic (evaluation) transforms.
        loss: matching costs; the run's ``config.loss`` (default: ``LossConfig()``).
        device: where the forward passes run; matching runs on the CPU.
    """
    loss = loss or LossConfig()
    adapter = adapter_for(model)
    matcher = HungarianMatcher.from_config(loss, adapter.class_head)
    was_training = model.training
    model.eval().to(device)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size,
                        collate_fn=functools.partial(collate_detection, size_divisor=adapter.size_divisor),
                        generator=torch.Generator())
    per_image, num_queries = [], 0
    for batch in loader:
        stage_matches, num_queries = match_every_stage(adapter, matcher, batch, device)
        per_image.append(instability_from_matches(stage_matches, num_queries))
    model.train(was_training)
    if not per_image:
        raise ValueError(f"{getattr(dataset, 'annotation_file', 'the dataset')} has no images to measure IS on")
    counts = torch.cat(per_image)
    return InstabilityResult(per_pair=counts.float().mean(0).tolist(), per_image=counts.tolist(),
                             num_queries=num_queries, label=label)


def runs_instability(runs: dict[str, str | Path], data_dir: str | Path, max_images: int | None = 500,
                     split: str | None = None, device: str | torch.device = "cpu",
                     progress: bool = False) -> list[InstabilityResult]:
    """IS of each finished run (label -> run directory), on the split its training evaluated
    on (or ``split``), with its own matching costs: Fig. 7's bars, one result per run."""
    results = []
    for label, run_dir in runs.items():
        run = load_run(run_dir)
        if progress:
            print(f"[figures] IS of {label} ({run.path})")
        results.append(instability(run.model, eval_dataset(data_dir, run.config, split), run.config.loss,
                                   max_images, label=label, device=device))
    return results
