"""The stages: each is a function from a batch to a batch (plus its state), behind one loop."""

from __future__ import annotations

from fraudpipe.worker import Context, Stage


class StageError(Exception):
    """A stage cannot start with this configuration or data dir; the message says why."""


def build(name: str, ctx: Context) -> Stage:
    if name == "gather":
        from fraudpipe.stages.gather import Gather

        return Gather(ctx)
    if name == "preprocess":
        from fraudpipe.stages.preprocess import Preprocess

        return Preprocess(ctx)
    if name == "train":
        from fraudpipe.stages.train import Train

        return Train(ctx)
    if name == "infer":
        from fraudpipe.stages.infer import Infer

        return Infer(ctx)
    raise StageError(f"unknown stage {name!r}")
