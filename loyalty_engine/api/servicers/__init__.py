"""Thin servicers: convert the request, call the service, convert the result."""
