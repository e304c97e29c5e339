"""Evaluation split over training processes: each predicts its share, the main process scores."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from detrdistill.data.coco import CocoDetection
from detrdistill.evaluate import evaluate_coco
from detrdistill.inference import evaluate_model, predict, restrict_to_images


class DatasetShard:
    """Every ``num_shards``-th image of the first ``count`` images of a split, from ``index``.

    Duck-types the parts of ``CocoDetection`` that ``inference.predict`` reads.
    """

    def __init__(self, dataset: CocoDetection, index: int, num_shards: int, count: int):
        self.dataset = dataset
        self.indices = list(range(index, count, num_shards))
        self.label_to_category_id = dataset.label_to_category_id

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        return self.dataset[self.indices[position]]


def evaluate_across_processes(
    accelerator: Accelerator,
    model,
    dataset: CocoDetection,
    batch_size: int,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """COCO AP of ``model`` on the first ``max_images`` images (all when None), every process
    predicting its share; the same metrics dict is returned on every process."""
    if accelerator.num_processes == 1:
        return evaluate_model(model, dataset, batch_size, max_images, progress)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    shard = DatasetShard(dataset, accelerator.process_index, accelerator.num_processes, count)
    results, image_ids = predict(model, shard, batch_size, None, progress and accelerator.is_main_process)
    gathered = gather_object([(results, image_ids)])
    metrics = [None]
    if accelerator.is_main_process:
        all_results = [r for shard_results, _ in gathered for r in shard_results]
        all_ids = [i for _, shard_ids in gathered for i in shard_ids]
        ground_truth = dataset.coco_json if max_images is None else restrict_to_images(dataset.coco_json, all_ids)
        metrics = [{**evaluate_coco(ground_truth, all_results), "num_images": len(all_ids)}]
    return broadcast_object_list(metrics)[0]
