"""A learner rank that sends malformed pushes over real gloo, then behaves: `python tests/rogue_learner.py FLAGS`.

Run it as rank 1 of a dist run (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, as under
torchrun). Its first pushes carry one fault each (FAULTS); after that it is an ordinary learner.
"""

import os
import socket
import sys

import torch.distributed as dist

from softsync.cli import build_parser, train_options
from softsync.config import make_config
from softsync.engines.dist import HEADER, PUSH, DistLearner, init, int_header

FAULTS = ["nan", "infinity", "future-timestamp", "old-timestamp", "other-learner", "unknown-kind", "other-batch"]


class RogueLearner(DistLearner):
    def __init__(self, config, learner_id):
        super().__init__(config, learner_id)
        self.faults = list(FAULTS)

    def exchange(self, send: bool) -> None:
        header = int_header(self.outbox)
        if not (send and header[0] == PUSH and self.faults):
            return super().exchange(send)
        saved_header, saved_value = header.copy(), float(self.outbox[HEADER])
        fault = self.faults.pop(0)
        if fault == "nan":
            self.outbox[HEADER] = float("nan")
        elif fault == "infinity":
            self.outbox[HEADER] = float("inf")
        elif fault == "future-timestamp":
            header[2] += 1000
        elif fault == "old-timestamp":
            header[2] -= 1
        elif fault == "other-learner":
            header[1] = 7
        elif fault == "unknown-kind":
            header[0] = 42
        elif fault == "other-batch":
            header[4] += 1
        super().exchange(send)
        header[:] = saved_header  # the learner sets some fields only once
        self.outbox[HEADER] = saved_value


def main() -> None:
    config = make_config(**train_options(build_parser().parse_args(["train", *sys.argv[1:]])))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    learner = RogueLearner(config, rank - 1)
    init(config, rank, world)
    processes = [None] * world  # the start-up collective of every rank (engines/launch.run_rank)
    dist.all_gather_object(processes, {"pid": os.getpid(), "host": socket.gethostname()})
    learner.run()
    dist.destroy_process_group()
    print(f"faults left: {len(learner.faults)}")


if __name__ == "__main__":
    main()
