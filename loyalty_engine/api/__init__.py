"""The gRPC layer: server, servicers, converters, and the one error mapping."""
