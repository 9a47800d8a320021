"""The stages, in three kinds behind one worker loop (worker.py): a source (gather) emits
batches; a transform (preprocess, infer: worker.BatchStage) maps each claimed batch to its
outputs; a job (train) runs on a schedule or a trigger. The worker never imports this package:
the CLI hands it the stage's class (stage_class)."""

from __future__ import annotations

from fraudpipe.worker import Stage


class StageError(Exception):
    """A stage cannot start with this configuration or data dir; the message says why."""


def stage_class(name: str) -> type[Stage]:
    """The stage of that name (its module imported only now: a worker runs one stage)."""
    if name == "gather":
        from fraudpipe.stages.gather import Gather

        return Gather
    if name == "preprocess":
        from fraudpipe.stages.preprocess import Preprocess

        return Preprocess
    if name == "train":
        from fraudpipe.stages.train import Train

        return Train
    if name == "infer":
        from fraudpipe.stages.infer import Infer

        return Infer
    raise StageError(f"unknown stage {name!r}")
