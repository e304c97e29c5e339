"""Analysis of trained detectors and of DETRDistill's pieces: the IS metric, FD's soft masks,
LD's pairs, AD's teacher queries, benchmark results, and the figures built from them.

One job per module:
    instability.py   IS between decoder stages (paper section 6, Fig. 7)
    masks.py         per-query and quality-weighted FD masks (Fig. 4, Fig. 6)
    ld_matching.py   teacher-student pairs of logits distillation
    query_prior.py   the teacher's queries in a student's decoder
    predictions.py   detections on a few images
    results.py       benchmark result files
    figures.py       all figures as PNG (``detrdistill figures``)
    workspace.py     data and runs: generate or reuse, load, tiny configs for smoke runs
    browser.py       the ipywidgets mask and prediction browser (notebook 06)
    adamixer_points.py  where an AdaMixer's queries sample (Fig. 2 (c), notebook 07)
    draw.py          shared plotting pieces
    inline.py        figures as pictures in notebooks
"""

from detrdistill.analysis.inline import register_png_display

register_png_display()
