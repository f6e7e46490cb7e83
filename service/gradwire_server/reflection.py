"""Server reflection that keeps the proto comments, so `grpcurl describe` shows the API docs.

grpcio-reflection serializes descriptors with `CopyToProto`, which drops comments
(source_code_info). This pool answers the same look-ups but serves gradwire's
files from the descriptor set that protos/generate.py writes with
`--include_source_info`.
"""

from __future__ import annotations

import importlib.resources

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

DESCRIPTOR_SET = "descriptor_set.binpb"


class _File:
    """A FileDescriptor whose CopyToProto includes comments when we have them."""

    def __init__(self, descriptor, commented: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._d, self._commented = descriptor, commented
        self.name = descriptor.name

    @property
    def dependencies(self):
        return [_File(d, self._commented) for d in self._d.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 (protobuf's name)
        if self.name in self._commented:
            proto.CopyFrom(self._commented[self.name])
        else:
            self._d.CopyToProto(proto)


class CommentedPool:
    """The default descriptor pool, with gradwire's files served with their comments."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()
        self._commented = {}
        for package in ("gradwire.v1", "gradwire.kserve"):  # the KServe protocol has its own set
            data = importlib.resources.files(package).joinpath(DESCRIPTOR_SET).read_bytes()
            self._commented.update({f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(data).file})

    def FindFileByName(self, name):  # noqa: N802
        return _File(self._pool.FindFileByName(name), self._commented)

    def FindFileContainingSymbol(self, symbol):  # noqa: N802
        try:
            return _File(self._pool.FindFileContainingSymbol(symbol), self._commented)
        except KeyError:
            # The pool knows services but not their methods as symbols, so `grpcurl describe
            # gradwire.v1.ModelService.Predict` failed: a method lives in its service's file.
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise
            return _File(found.file, self._commented)

    def __getattr__(self, name):  # FindMessageTypeByName, FindExtensionByNumber, FindAllExtensions
        return getattr(self._pool, name)


def enable(service_names, server) -> None:
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server, pool=CommentedPool())
