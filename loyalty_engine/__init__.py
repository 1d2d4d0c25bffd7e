"""loyalty-engine: a loyalty-program engine served over gRPC."""

__version__ = "0.1.0"
