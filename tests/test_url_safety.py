"""Outbound URL checks for webhook and internal-alert steps (herald/delivery/url_safety.py)."""

import ipaddress
import socket

import pytest

from herald.core.config import Settings
from herald.delivery import url_safety
from herald.delivery.url_safety import UnsafeUrl, check_url

PUBLIC_IP = "93.184.215.14"


@pytest.fixture
def dns(monkeypatch) -> dict[str, list[str]]:
    """A fake resolver: tests map host names to addresses; other names do not resolve."""
    records: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host in records:
            return records[host]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    monkeypatch.setattr(url_safety, "resolve_host", resolve)
    return records


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://127.1.2.3:8443/hook", "loopback"),
        ("https://2130706433/hook", "loopback"),  # 127.0.0.1 written as one number
        ("https://10.1.2.3/hook", "private"),
        ("https://172.16.0.1/hook", "private"),
        ("https://172.31.255.254/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://240.0.0.1/hook", "reserved"),
        ("https://100.64.0.1/hook", "non-global"),
        ("https://[::1]/hook", "loopback"),
        ("https://[fc00::1]/hook", "private"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://[2002:a00:1::]/hook", "private"),  # 6to4 wrapping 10.0.0.1
    ],
)
def test_internal_addresses_are_refused(url: str, kind: str):
    with pytest.raises(UnsafeUrl, match=f"a {kind} address"):
        check_url(url, allow_hosts=[])


def test_localhost_is_refused_because_it_resolves_to_loopback():
    with pytest.raises(UnsafeUrl, match="'localhost' resolves to a loopback address"):
        check_url("https://localhost/hook", allow_hosts=[])


def test_unsafe_url_is_a_value_error_with_a_reason():
    with pytest.raises(ValueError) as info:
        check_url("https://127.0.0.1/", allow_hosts=[])
    assert info.value.reason == "host '127.0.0.1' resolves to a loopback address (127.0.0.1)"


def test_public_https_url_is_allowed_and_pinned_to_its_address(dns):
    dns["hooks.example.com"] = [PUBLIC_IP]
    target = check_url("https://Hooks.Example.com/a/b?c=1", allow_hosts=[])
    assert target.ip == PUBLIC_IP
    assert str(target.connect_url) == f"https://{PUBLIC_IP}/a/b?c=1"
    assert target.host_header == "hooks.example.com"
    assert target.extensions == {"sni_hostname": "hooks.example.com"}


def test_non_default_port_is_kept_in_host_header(dns):
    dns["hooks.example.com"] = [PUBLIC_IP]
    target = check_url("https://hooks.example.com:8443/x", allow_hosts=[])
    assert str(target.connect_url) == f"https://{PUBLIC_IP}:8443/x"
    assert target.host_header == "hooks.example.com:8443"


def test_ip_literal_target_sends_no_sni():
    target = check_url(f"https://{PUBLIC_IP}/x", allow_hosts=[])
    assert target.ip == PUBLIC_IP
    assert target.extensions == {}


def test_host_with_any_internal_address_is_refused(dns):
    dns["mixed.example.com"] = [PUBLIC_IP, "10.0.0.7"]
    with pytest.raises(UnsafeUrl, match=r"private address \(10\.0\.0\.7\)"):
        check_url("https://mixed.example.com/hook", allow_hosts=[])


def test_host_that_does_not_resolve_is_refused(dns):
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        check_url("https://nowhere.invalid/hook", allow_hosts=[])


def test_plain_http_is_refused_for_public_hosts(dns):
    dns["hooks.example.com"] = [PUBLIC_IP]
    with pytest.raises(UnsafeUrl, match="plain http is not allowed"):
        check_url("http://hooks.example.com/hook", allow_hosts=[])
    with pytest.raises(UnsafeUrl, match="plain http is not allowed"):
        check_url(f"http://{PUBLIC_IP}/hook", allow_hosts=[])


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://hooks.example.com/x", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("hooks.example.com/x", "scheme"),
        ("https:///x", "no host"),
        ("https://hooks.example.com:99999/x", "out of range"),
        ("https://[zz]/", "invalid url"),
        ("https://hooks.example.com:port/", "invalid url"),
    ],
)
def test_malformed_urls_are_refused(url: str, match: str):
    with pytest.raises(UnsafeUrl, match=match):
        check_url(url, allow_hosts=[])


def test_allow_listed_host_may_resolve_to_loopback_and_use_http():
    target = check_url("http://localhost:8080/hook", allow_hosts=["localhost"])
    assert target.ip in {"127.0.0.1", "::1"}
    assert target.host_header == "localhost:8080"


def test_allow_list_matches_host_names_case_insensitively(dns):
    dns["hooks.internal"] = ["10.0.0.5"]
    target = check_url("https://hooks.internal/x", allow_hosts=["Hooks.Internal."])
    assert target.ip == "10.0.0.5"


def test_allow_listed_network_admits_its_addresses_over_http():
    target = check_url("http://10.1.2.3:9000/hook", allow_hosts=["10.0.0.0/8"])
    assert target.ip == "10.1.2.3"
    assert str(target.connect_url) == "http://10.1.2.3:9000/hook"


def test_allow_listed_network_admits_a_host_name_resolving_into_it(dns):
    dns["crm.internal"] = ["10.20.0.4"]
    assert check_url("http://crm.internal/hook", allow_hosts=["10.20.0.0/16"]).ip == "10.20.0.4"


def test_allow_listed_network_does_not_cover_other_internal_addresses(dns):
    dns["crm.internal"] = ["10.20.0.4", "192.168.0.9"]
    with pytest.raises(UnsafeUrl, match="192.168.0.9"):
        check_url("https://crm.internal/hook", allow_hosts=["10.20.0.0/16"])
    with pytest.raises(UnsafeUrl, match="loopback"):
        check_url("https://127.0.0.1/hook", allow_hosts=["10.0.0.0/8"])


def test_allow_listed_ip_covers_its_ipv4_mapped_form():
    target = check_url("https://[::ffff:127.0.0.1]/hook", allow_hosts=["127.0.0.1"])
    assert target.ip == "::ffff:127.0.0.1"
    assert target.host_header == "[::ffff:127.0.0.1]"


def test_allow_listed_ipv6_loopback():
    target = check_url("http://[::1]:8080/hook", allow_hosts=["::1"])
    assert str(target.connect_url) == "http://[::1]:8080/hook"


def test_allow_list_is_read_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("HERALD_WEBHOOK_ALLOW_HOSTS", '["127.0.0.0/8", "hooks.internal"]')
    assert Settings().webhook_allow_hosts == ["127.0.0.0/8", "hooks.internal"]
    monkeypatch.delenv("HERALD_WEBHOOK_ALLOW_HOSTS")
    assert Settings().webhook_allow_hosts == []
