"""fraudpipe: real-time fraud detection over durable file queues."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fraudpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
