"""The ``gradwire`` command.

    gradwire serve [server args...]     # run the server (needs the gradwire[server] extra)
    gradwire health [--target localhost:50051] [--timeout 3] [--service ""]
                    [--cacert ca.pem [--cert client.pem --key client.key]]

``health`` calls the standard ``grpc.health.v1.Health/Check``, prints the
status and exits 0 on SERVING, 1 otherwise; docker-compose's healthcheck runs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

SERVER_MISSING = "the server is not installed: pip install 'gradwire[server]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (``gradwire = "gradwire.cli:main"``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # `serve` hands every later argument to the server's own parser, --help included.
    if args and args[0] == "serve":
        return _serve(args[1:])
    parser = _parser()
    options = parser.parse_args(args)
    if options.command == "health":
        return _health(options.target, options.timeout, options.service, options.cacert, options.cert, options.key)
    parser.print_help(sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradwire", description="gradwire model-training service")
    from gradwire import __version__

    parser.add_argument("--version", action="version", version=f"gradwire {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,health}")
    commands.add_parser("serve", help="run the server; arguments go to the server", add_help=False)
    health = commands.add_parser("health", help="check a server's grpc.health.v1 status")
    health.add_argument("--target", default="localhost:50051", help="host:port (default %(default)s)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default %(default)s)")
    health.add_argument("--service", default="", help='service name; "" is the whole server (default)')
    health.add_argument("--cacert", default=None, help="PEM CA of the server's certificate: connect with TLS")
    health.add_argument("--cert", default=None, help="PEM client certificate (mutual TLS)")
    health.add_argument("--key", default=None, help="PEM client key (mutual TLS)")
    return parser


def _serve(args: list[str]) -> int:
    try:
        from gradwire_server import cli as server_cli
    except ImportError:
        print(SERVER_MISSING, file=sys.stderr)
        return 2
    code = server_cli.main(args)
    return int(code or 0)


def _health(target: str, timeout: float, service: str, cacert=None, cert=None, key=None) -> int:
    import pathlib

    import grpc

    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        print("grpc health checking is not installed: pip install grpcio-health-checking", file=sys.stderr)
        return 2
    if cacert or cert:
        read = lambda p: pathlib.Path(p).read_bytes() if p else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(cacert), read(key), read(cert))
        channel_cm = grpc.secure_channel(target, credentials)
    else:
        channel_cm = grpc.insecure_channel(target)
    with channel_cm as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())
