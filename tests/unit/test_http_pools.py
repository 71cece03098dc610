"""The poll pool reads proxy and CA settings from the environment with requests' rules."""

from __future__ import annotations

import certifi
import pytest
import urllib3

from jobs.clients.http import make_pool

BASE = "https://api.pikapikapika.io/web"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_variables_means_a_direct_pool_trusting_certifi() -> None:
    pool = make_pool(BASE)
    assert not isinstance(pool, urllib3.ProxyManager)
    assert pool.connection_pool_kw["ca_certs"] == certifi.where()
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"


def test_https_proxy_is_used_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    pool = make_pool(BASE)
    assert isinstance(pool, urllib3.ProxyManager)
    assert pool.proxy.port == 3128
    monkeypatch.setenv("NO_PROXY", "api.pikapikapika.io")
    assert not isinstance(make_pool(BASE), urllib3.ProxyManager)


def test_a_ca_bundle_file_or_directory_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert make_pool(BASE).connection_pool_kw["ca_certs"] == str(bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))
    assert make_pool(BASE).connection_pool_kw["ca_cert_dir"] == str(tmp_path)
