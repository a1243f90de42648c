"""Engines drive the parameter-server core and the learner step: sim (virtual time) and dist."""
from __future__ import annotations


def end_epoch(server, data, recorder, epoch: int, engine_state: dict, virtual_s: float | None = None) -> bool:
    """What every engine does when the last gradient of ``epoch`` has arrived.

    The final epoch flushes n-softsync's partial buffer (no gradient is wasted); then the
    schedule moves on, the recorder evaluates and checkpoints. Returns True if the run diverged.
    """
    if epoch + 1 == data.epochs:
        server.apply_update()
    server.set_epoch(epoch + 1)
    checkpoint = {"server": server.state_dict(), "data": data.state_dict(), "engine": engine_state}
    return recorder.epoch_end(epoch, server, virtual_s=virtual_s, checkpoint=checkpoint)


def checkpoint_due(server, every: int, updated: bool) -> bool:
    """--checkpoint-every K: True right after every K-th update."""
    return updated and every > 0 and server.clock % every == 0


def save_checkpoint(server, data, recorder, engine_state: dict) -> None:
    """A checkpoint between epochs (--checkpoint-every)."""
    recorder.save_checkpoint({"server": server.state_dict(), "data": data.state_dict(), "engine": engine_state}, data.ended)
