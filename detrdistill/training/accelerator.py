"""Several processes, one run: Hugging Face Accelerate sets up the processes, the loop stays ours.

Launch with ``accelerate launch --multi_gpu --num_processes N -m detrdistill.cli ...`` or
``torchrun --nproc_per_node N -m detrdistill.cli ...`` (README); a plain ``detrdistill``
call is one process. GPUs talk over NCCL, CPU processes over gloo. What is split, and
how results stay those of one process:

- data: ``data.batch_size`` is the global batch; each process draws its slice of it
  (``sampler.py``), with augmentations seeded per sample, not per process;
- losses: counts that normalise a loss (ground-truth boxes, matched pairs) are averaged over
  processes (``distributed.py``), as DETR does, and DDP averages the gradients, so the
  update equals one process's on the whole global batch;
- evaluation: each process predicts every N-th image, the main process scores them all
  (``evaluation.py``);
- files: only the main process writes; every process loads a checkpoint to resume.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

# Long main-process-only phases (backbone pretraining into the shared cache, save_pretrained)
# keep the other processes waiting at a barrier; NCCL's default timeout can be 10 minutes.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


def make_accelerator() -> Accelerator:
    """The Accelerator for this process: one process unless launched by accelerate/torchrun.

    Mixed precision is not Accelerate's business here: the loop autocasts from
    ``train.mixed_precision`` (one config, also when several runs share a Python process).
    ``find_unused_parameters``: some trainable parameters get no gradient in a step (e.g. a
    ResNet stage no detector level reads), which DDP must be told about.
    """
    launched_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched_precision != "no":
        print(
            f"note: accelerate launch --mixed_precision {launched_precision} is ignored; "
            "set train.mixed_precision in the config instead"
        )
    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return Accelerator(
        cpu=use_cpu,
        mixed_precision="no",
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True),
            InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT),
        ],
    )
