"""Load time and peak memory of a COCO-scale annotation file (100k images, 7 boxes each).

    python benchmarks/annotation_load.py [--images 100000] [--out /tmp/annotation_load]

Writes a synthetic ``instances_train.json`` (no image files: only the annotation reader is
timed), loads it with ``CocoDetection`` in a fresh process and records the wall time and the
process's peak resident memory in benchmarks/results/annotation_load.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LOAD = """
import json, resource, time, warnings
warnings.simplefilter("ignore")
started = time.perf_counter()
from detrdistill.data.coco import CocoDetection
dataset = CocoDetection({root!r}, "train")
print(json.dumps({{"load_s": round(time.perf_counter() - started, 1), "images": len(dataset),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}))
"""


def write_annotations(root: Path, num_images: int, boxes_per_image: int = 7, seed: int = 0) -> Path:
    rng = random.Random(seed)
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480} for i in range(num_images)]
    annotations = [
        {"id": i * boxes_per_image + k + 1, "image_id": i, "category_id": rng.randint(1, 80), "iscrowd": 0,
         "bbox": [rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(5, 100), rng.uniform(5, 90)], "area": 1.0}
        for i in range(num_images) for k in range(boxes_per_image)
    ]
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": f"class{i}"} for i in range(1, 81)]}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/annotation_load"))
    args = parser.parse_args()
    path = write_annotations(args.out, args.images)
    measured = json.loads(subprocess.run([sys.executable, "-c", LOAD.format(root=str(args.out))], check=True,
                                         capture_output=True, text=True).stdout)
    record = {**measured, "annotation_mib": round(path.stat().st_size / 2**20), "boxes": args.images * 7,
              "command": f"python benchmarks/annotation_load.py --images {args.images}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "annotation_load.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
