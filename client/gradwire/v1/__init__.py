"""Generated protobuf messages and gRPC stubs for gradwire.v1 (see protos/generate.py)."""
