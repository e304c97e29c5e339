"""An ipywidgets browser of a teacher's FD masks and predictions (notebook 06).

Controls: an image picker, a feature-level picker, a query slider (queries ordered by
quality score, best first) and the mask kind (the query's psi_i, the vanilla mean, the
quality-weighted sum). ``figure()`` draws the current state without any widget front end,
so the same view works headless (and in tests).
"""

from __future__ import annotations

import numpy as np

from detrdistill.analysis.draw import draw_boxes, load_batch, new_figure, show_image
from detrdistill.analysis.masks import ImageMasks, compute_masks, overlay_mask

MASK_KINDS = ("query", "vanilla", "quality-weighted")
CHUNK = 4  # images computed together


class MaskBrowser:
    """Browse ``compute_masks`` of ``model`` over the first ``max_images`` images of ``dataset``.

    Args:
        model: a trained DETR-family detector (the teacher whose masks FD uses).
        dataset: a ``CocoDetection`` with evaluation transforms.
        loss, features: the run's ``config.loss`` and ``config.distill.features``.
        names: class index -> name, for captions.
    """

    def __init__(self, model, dataset, loss=None, features=None, names: dict | None = None, max_images: int = 50,
                 device: str = "cpu"):
        self.model, self.dataset, self.loss, self.features, self.device = model, dataset, loss, features, device
        self.names = names if names is not None else getattr(dataset, "id2label", None)
        self.num_images = min(max_images, len(dataset))
        self._cache: dict[int, ImageMasks] = {}
        first = self.masks(0)
        self.image, self.level, self.rank, self.kind = 0, 0, 0, "query"
        self.num_levels, self.num_queries = first.num_levels, len(first.quality)

    def masks(self, image: int) -> ImageMasks:
        """Masks of image ``image`` (computed once with its chunk of neighbours, then cached)."""
        if image not in self._cache:
            # Chunks rather than single images: a batch of one 1x1 map trips GroupNorm's check
            # in the coarsest level of small multi-scale models.
            start = image - image % CHUNK
            chunk = list(range(start, min(start + CHUNK, self.num_images)))
            samples = compute_masks(self.model, load_batch(self.dataset, chunk), self.loss, self.features, self.device)
            self._cache.update(zip(chunk, samples, strict=True))
        return self._cache[image]

    def query_at(self, image: int, rank: int) -> int:
        """The query with the ``rank``-th highest quality score in ``image`` (0 = best)."""
        return int(np.argsort(-self.masks(image).quality, kind="stable")[rank])

    def figure(self, image: int | None = None, level: int | None = None, rank: int | None = None,
               kind: str | None = None):
        """The view for the given (or current) state: detections and GT on the left, the mask on the right."""
        image = self.image if image is None else image
        level = self.level if level is None else level
        rank = self.rank if rank is None else rank
        kind = self.kind if kind is None else kind
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind {kind!r} is not one of {MASK_KINDS}")
        sample = self.masks(image)
        query = self.query_at(image, rank)
        figure, axes = new_figure(1, 2, panel_inches=3.2)
        show_image(axes[0, 0], sample.image, f"image {image}: GT (white), query #{query} (dashed)")
        draw_boxes(axes[0, 0], sample.gt_boxes_xyxy, color="white")
        draw_boxes(axes[0, 0], sample.boxes_xyxy[query], sample.labels[query:query + 1], self.names,
                   sample.scores[query:query + 1], linestyle="--")
        if kind == "query":
            mask = sample.query_masks[level][query]
            title = (f"psi_{query}, stride {sample.stride(level)}: q={sample.quality[query]:.2f} "
                     f"c={sample.scores[query]:.2f} IoU={sample.iou[query]:.2f}")
        else:
            mask = (sample.vanilla if kind == "vanilla" else sample.weighted)[level]
            title = f"{kind} mask, stride {sample.stride(level)}"
        overlay_mask(axes[0, 1], sample.image, mask, title)
        return figure

    def widget(self):
        """The interactive browser (needs ipywidgets and a notebook front end to interact)."""
        import ipywidgets as widgets
        from IPython.display import display

        image = widgets.Dropdown(options=[(f"val image {i}", i) for i in range(self.num_images)], description="image")
        level = widgets.Dropdown(options=[(f"level {i}", i) for i in range(self.num_levels)], description="level")
        rank = widgets.IntSlider(0, 0, self.num_queries - 1, description="query rank")
        kind = widgets.ToggleButtons(options=list(MASK_KINDS), description="mask")
        output = widgets.Output()

        def render(_change=None):
            self.image, self.level, self.rank, self.kind = image.value, level.value, rank.value, kind.value
            output.clear_output(wait=True)
            with output:
                display(self.figure())

        for control in (image, level, rank, kind):
            control.observe(render, names="value")
        render()
        return widgets.VBox([widgets.HBox([image, level]), widgets.HBox([rank, kind]), output])
