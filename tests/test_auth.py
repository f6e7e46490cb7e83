"""Who gets in: bearer tokens (constant-time), TLS, mutual TLS, reflection off; grpcurl as README shows it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradwire as gw
from gradwire.kserve import grpc_service_pb2 as kserve_pb2
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import datasets_pb2, datasets_pb2_grpc
from gradwire_server.config import Settings
from gradwire_server.server import create_server

OPENSSL = shutil.which("openssl")
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
TOKEN = "t0k3n-for-tests"


def serve(tmp_path, **overrides):
    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path / "data", grace_period_s=0.5, **overrides)
    return create_server(settings)


def call(channel, metadata=None):
    stub = datasets_pb2_grpc.DatasetServiceStub(channel)
    return stub.ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=5, metadata=metadata)


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def test_bearer_token_on_every_rpc_but_health(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nfrom-file-token\n")
    running = serve(tmp_path, auth_tokens=TOKEN, auth_tokens_file=str(tokens))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            assert code_of(lambda: call(ch)) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: call(ch, [("authorization", "Bearer wrong")])) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: call(ch, [("authorization", TOKEN)])) == grpc.StatusCode.UNAUTHENTICATED  # no scheme
            assert code_of(lambda: call(ch, [("authorization", f"Bearer {TOKEN}x")])) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: call(ch, [("authorization", f"Bearer {TOKEN}")])) == grpc.StatusCode.OK
            assert code_of(lambda: call(ch, [("authorization", "bearer from-file-token")])) == grpc.StatusCode.OK
            # health stays open for load balancers and orchestrators
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            # streams too: an upload without a token is refused before a byte is stored
            stub = datasets_pb2_grpc.DatasetServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.UploadDataset(iter([datasets_pb2.UploadDatasetRequest()]), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in info.value.details()
            # and a bidirectional one (KServe's ModelStreamInfer): refused before any request is read
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                list(kserve.ModelStreamInfer(iter([kserve_pb2.ModelInferRequest(model_name="m")]), timeout=5))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            answers = kserve.ModelStreamInfer(iter([kserve_pb2.ModelInferRequest(model_name="m", id="1")]), timeout=5,
                                              metadata=[("authorization", f"Bearer {TOKEN}")])
            assert [a.error_message.split(":")[0] for a in answers] == ["NOT_FOUND"]  # let in: the request is read
        with gw.Client(f"127.0.0.1:{running.port}", token=TOKEN) as client:
            assert client.list_datasets() == []
        with gw.Client(f"127.0.0.1:{running.port}") as client:
            with pytest.raises(gw.UnauthenticatedError, match="authorization: Bearer"):
                client.list_datasets()
            assert TOKEN not in repr(client)
    finally:
        running.stop(0)


def test_reflection_can_be_switched_off(tmp_path):
    if GRPCURL is None:
        pytest.skip("grpcurl not installed")
    running = serve(tmp_path, reflection=False)
    try:
        out = subprocess.run([GRPCURL, "-plaintext", f"127.0.0.1:{running.port}", "list"], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "reflection" in out.stderr.lower()
    finally:
        running.stop(0)


# ---- TLS -------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pathlib.Path:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gradwire test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_with_token(tmp_path, pki):
    running = serve(tmp_path, tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"), auth_tokens=TOKEN)
    target = f"localhost:{running.port}"
    try:
        with gw.Client(target, token=TOKEN, root_certificates=pki / "ca.pem") as client:
            assert client.list_datasets() == []
        with gw.Client(target, token=TOKEN, timeout=3) as plaintext:
            with pytest.raises(gw.UnavailableError):
                plaintext.list_datasets()
        with gw.Client(target, root_certificates=(pki / "ca.pem").read_bytes()) as no_token:
            with pytest.raises(gw.UnauthenticatedError):
                no_token.list_datasets()
        health = subprocess.run([sys.executable, "-m", "gradwire", "health", "--target", target, "--cacert", str(pki / "ca.pem")],
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
        if GRPCURL:
            out = subprocess.run([GRPCURL, "-cacert", str(pki / "ca.pem"), "-H", f"authorization: Bearer {TOKEN}", target,
                                  "gradwire.v1.DatasetService/ListDatasets"], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and json.loads(out.stdout) == {}, out.stderr
    finally:
        running.stop(0)


def test_mutual_tls(tmp_path, pki):
    running = serve(tmp_path, tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"),
                    tls_client_ca_file=str(pki / "ca.pem"))
    target = f"localhost:{running.port}"
    try:
        with gw.Client(target, root_certificates=pki / "ca.pem", certificate_chain=pki / "client.pem",
                       private_key=pki / "client.key") as client:
            assert client.list_datasets() == []
        with gw.Client(target, root_certificates=pki / "ca.pem", timeout=3) as no_cert:
            with pytest.raises(gw.UnavailableError):
                no_cert.list_datasets()
        if GRPCURL:
            out = subprocess.run([GRPCURL, "-cacert", str(pki / "ca.pem"), "-cert", str(pki / "client.pem"), "-key",
                                  str(pki / "client.key"), target, "list"], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and "gradwire.v1.ModelService" in out.stdout, out.stderr
    finally:
        running.stop(0)
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        gw.Client(target, certificate_chain=pki / "client.pem")
