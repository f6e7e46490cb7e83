"""NetworkService: describes a network (shapes, parameters, FLOPs) without training it."""

from __future__ import annotations

from gradwire.v1 import network_pb2, network_pb2_grpc

from .. import errors, spec
from .context import ServerState


def summary_proto(summary: spec.NetworkSummary) -> network_pb2.NetworkSummary:
    """spec.NetworkSummary -> NetworkSummary (a residual block's body follows its row)."""
    return network_pb2.NetworkSummary(
        layers=[
            network_pb2.LayerSummary(path=layer.path, kind=layer.kind, output_shape=list(layer.output_shape),
                                     parameter_count=layer.parameter_count, flops=layer.flops, depth=depth)
            for depth, layer in summary.rows()
        ],
        input_shape=list(summary.input_shape),
        output_shape=list(summary.output_shape),
        parameter_count=summary.parameter_count,
        flops=summary.flops,
    )


class NetworkServicer(network_pb2_grpc.NetworkServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state

    def SummarizeNetwork(self, request: network_pb2.SummarizeNetworkRequest, context) -> network_pb2.NetworkSummary:
        if not request.HasField("network"):
            raise errors.InvalidArgument("required", field="network")
        if not request.input_shape:
            raise errors.InvalidArgument("required: the shape of one example, e.g. [1, 8, 8]", field="input_shape")
        if any(d < 1 for d in request.input_shape):
            raise errors.InvalidArgument(f"sizes must be >= 1, got {list(request.input_shape)}", field="input_shape")
        return summary_proto(spec.infer_network(request.network, tuple(request.input_shape)))
