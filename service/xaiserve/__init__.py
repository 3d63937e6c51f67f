"""xaiserve: a gRPC service that explains what image classifiers see."""

__version__ = "0.1.0"
