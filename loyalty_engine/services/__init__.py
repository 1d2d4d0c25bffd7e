"""Application services: each takes a unit of work and plain values, and returns plain values.

They never commit: the caller owns the transaction (the gRPC layer's exactly-once runner,
the CLI or a background job), so a request's effects and its stored response commit together.
"""
