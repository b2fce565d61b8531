"""``python -m tests.train.preempted_main ARGS``: ``glm-train ARGS`` whose rank 0 receives SIGTERM while step 3
builds its batch (run with ``--data-workers 0``, so that the batch is built in the training process).

Only rank 0 is signalled: the other ranks must stop at the same step through the loop's reduction of the flag.
"""

from __future__ import annotations

import os
import signal
import sys

from training import cli
from training.tasks import PretrainTask

_batches = PretrainTask.micro_batches


def _preempted(self: PretrainTask, step: int, rank: int, world_size: int) -> list:
    if step == 2 and rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    return _batches(self, step, rank, world_size)


if __name__ == "__main__":
    PretrainTask.micro_batches = _preempted
    sys.exit(cli.main())
