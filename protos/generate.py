"""Generate the Python message and service stubs from protos/ (the one way to make them).

    python protos/generate.py            # writes client/gradwire/v1/*_pb2*.py and client/gradwire/kserve/
    python protos/generate.py --out DIR  # writes to DIR/gradwire/{v1,kserve} (used by the drift test)

KServe v2's Open Inference Protocol (package `inference`) lives in
protos/gradwire/kserve/grpc_service.proto and is generated into the
gradwire.kserve package, apart from gradwire.v1, with its own descriptor set.

Stubs are committed so the SDK installs without grpcio-tools; tests/test_protos.py
fails when they differ from what this script produces.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "client"
DESCRIPTOR_SET = "descriptor_set.binpb"


PACKAGES = ("v1", "kserve")  # folders under protos/gradwire/, each its own Python package


def proto_files(package: str = "v1") -> list[pathlib.Path]:
    return sorted((PROTO_ROOT / "gradwire" / package).glob("*.proto"))


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc (from grpcio-tools) over every package's .protos; return the files written."""
    written: list[pathlib.Path] = []
    for package in PACKAGES:
        written += _generate(out, package)
    return written


DOCSTRINGS = {
    "v1": "Generated protobuf messages and gRPC stubs for gradwire.v1 (see protos/generate.py).",
    "kserve": "Generated KServe v2 Open Inference Protocol stubs (package `inference`; see protos/generate.py).",
}


def _generate(out: pathlib.Path, package: str) -> list[pathlib.Path]:
    import google.rpc  # googleapis-common-protos ships google/rpc/*.proto
    import grpc_tools
    from grpc_tools import protoc

    googleapis = pathlib.Path(google.rpc.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    target = out / "gradwire" / package
    target.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files(package)]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        # Descriptors with comments, so server reflection (grpcurl describe) shows the docs.
        f"--descriptor_set_out={target / DESCRIPTOR_SET}",
        "--include_source_info",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    (target / "__init__.py").write_text(f'"""{DOCSTRINGS[package]}"""\n')
    return sorted(target.glob("*_pb2*.py*")) + [target / DESCRIPTOR_SET, target / "__init__.py"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
