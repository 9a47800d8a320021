"""fraudpipe: real-time fraud detection over durable file queues."""

import os

# LightGBM's OpenMP threads busy-wait by default; on shared cores (every stage on one machine,
# or a pod under a CPU limit) that made a 3 s training take minutes. Sleep-wait instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fraudpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
