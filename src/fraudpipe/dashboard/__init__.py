"""The dashboard stage: one page, a WebSocket pushing a snapshot every second, and controls.

Everything it shows is measured from the pipeline itself (status heartbeats, queue folders,
scored batches, arrived labels, the model registry, and in a cluster the metrics API); what
is not measured is sent as null with the reason, never as a made-up zero.
"""
