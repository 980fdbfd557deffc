"""TLS and mutual TLS on a real service, with certificates made by openssl for the test."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmmeter.channels import TlsConfig
from llmmeter.v1 import query_pb2, query_pb2_grpc
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from keyring import ADMIN, keyed_channel

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


async def _serve(db_url: str, pki: Path, mutual: bool) -> QueryServer:
    server = QueryServer(QuerySettings(
        database_url=db_url, host="127.0.0.1", port=0, metrics_port=0, shutdown_grace_seconds=1.0,
        tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
        tls_client_ca_file=(pki / "ca.pem") if mutual else None))
    await server.start()
    return server


@pytest.fixture
async def tls_server(db_url: str, pki: Path) -> AsyncIterator[QueryServer]:
    server = await _serve(db_url, pki, mutual=False)
    yield server
    await server.stop()


@pytest.fixture
async def mtls_server(db_url: str, pki: Path) -> AsyncIterator[QueryServer]:
    server = await _serve(db_url, pki, mutual=True)
    yield server
    await server.stop()


async def _summary(addr: str, tls: TlsConfig | None) -> grpc.StatusCode:
    async with keyed_channel(addr, ADMIN.token, tls=tls) as ch:
        try:
            await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_a_tls_port_serves_tls_clients_only(tls_server: QueryServer, pki: Path) -> None:
    addr = f"127.0.0.1:{tls_server.port}"
    assert await _summary(addr, TlsConfig(ca_file=pki / "ca.pem")) == grpc.StatusCode.OK
    by_name = await _summary(f"localhost:{tls_server.port}", TlsConfig(ca_file=pki / "ca.pem"))
    assert by_name == grpc.StatusCode.OK
    assert await _summary(addr, None) == grpc.StatusCode.UNAVAILABLE  # plaintext gets no answer
    wrong_ca = TlsConfig(ca_file=pki / "client.pem")
    assert await _summary(addr, wrong_ca) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: QueryServer, pki: Path) -> None:
    addr = f"127.0.0.1:{mtls_server.port}"
    with_cert = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key")
    assert await _summary(addr, with_cert) == grpc.StatusCode.OK
    assert await _summary(addr, TlsConfig(ca_file=pki / "ca.pem")) == grpc.StatusCode.UNAVAILABLE


def test_half_a_tls_configuration_is_refused_by_name(pki: Path) -> None:
    with pytest.raises(ValueError, match="LLMMETER_TLS_CERT_FILE and LLMMETER_TLS_KEY_FILE"):
        QuerySettings(tls_cert_file=pki / "server.pem").server_credentials()
    with pytest.raises(ValueError, match="LLMMETER_TLS_CLIENT_CA_FILE"):
        QuerySettings(tls_client_ca_file=pki / "ca.pem").server_credentials()
