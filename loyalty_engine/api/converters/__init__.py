"""Converters between protobuf messages and domain values, one module per message family."""
