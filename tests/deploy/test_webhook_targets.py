"""Webhooks cannot be aimed inside (OWASP API7, SSRF): the address rules, the check at submit, and at
every delivery the check against the address actually connected to (DNS rebinding), without redirects.

Deliveries go to a real HTTP receiver on 127.0.0.1; the name the URL carries is resolved by a resolver
the test controls, so "public at submit, private at delivery" can be staged without a DNS server.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.services.patterns import WEBHOOK_URL
from app.webhook_targets import BlockedTarget, check_at_submit, pin, refusal
from app.webhooks import EVENT_JOB_STATE, WebhookDispatcher, job_event_body, validate_url
from tests.deploy.receiver import Receiver, running_receiver

PUBLIC = "93.184.216.34"  # example.com; never contacted by these tests

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("100.64.0.1", "shared"),
    ("192.0.2.1", "private"), ("198.18.0.1", "private"),  # documentation, benchmarking
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"), ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
]  # fmt: skip


@pytest.mark.parametrize(("address", "kind"), REFUSED, ids=[a for a, _ in REFUSED])
def test_internal_addresses_are_refused(address: str, kind: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason, reason


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def _resolver(answers: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    def resolve(host: str, _port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError(f"{host}: name not known")
        return answers[host]

    return resolve


def test_submit_refuses_a_name_with_any_internal_address_and_accepts_unknown_names() -> None:
    resolve = _resolver({"ok.example": [PUBLIC], "mixed.example": [PUBLIC, "10.0.0.7"]})
    check_at_submit("https://ok.example/hook", allow_private=False, resolver=resolve)
    with pytest.raises(BlockedTarget, match=r"resolves to 10\.0\.0\.7, a private address"):
        check_at_submit("https://mixed.example/hook", allow_private=False, resolver=resolve)
    # A name that does not resolve now is accepted: every delivery checks it again.
    check_at_submit("https://unknown.example/hook", allow_private=False, resolver=resolve)
    check_at_submit("http://10.0.0.7/hook", allow_private=True, resolver=resolve)
    with pytest.raises(BlockedTarget, match="MEMAUDIT_WEBHOOK_ALLOW_PRIVATE"):
        check_at_submit("http://[::ffff:10.0.0.7]/hook", allow_private=False, resolver=resolve)


def test_a_pinned_target_keeps_the_name_for_host_and_tls() -> None:
    resolve = _resolver({"hooks.example": [PUBLIC]})
    target = pin("https://user@hooks.example:8443/a/b?c=1", allow_private=False, resolver=resolve)
    assert target.url == f"https://user@{PUBLIC}:8443/a/b?c=1"
    assert target.host_header == "hooks.example:8443"  # the name, without the user info
    assert (target.sni_hostname, target.address) == ("hooks.example", PUBLIC)
    plain = pin("http://[2606:4700:4700::1111]/x", allow_private=False, resolver=resolve)
    assert plain.url == "http://[2606:4700:4700::1111]/x" and plain.sni_hostname is None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


def _deliver(dispatcher: WebhookDispatcher, url: str) -> None:
    job = {"id": "job-1", "state": "succeeded", "kind": "vae_audit", "progress": {}, "summary": None,
           "error": None}  # fmt: skip
    try:
        assert dispatcher.submit(url, EVENT_JOB_STATE, job_event_body(job, "running", int(time.time())))
        assert dispatcher.flush(15)
    finally:
        dispatcher.close()


def _named(receiver: Receiver, host: str = "hooks.example") -> str:
    return receiver.url.replace("127.0.0.1", host)


def test_rebinding_public_at_submit_private_at_delivery_is_blocked(receiver: Receiver) -> None:
    url = _named(receiver)
    check_at_submit(url, allow_private=False, resolver=_resolver({"hooks.example": [PUBLIC]}))
    # The name now answers with the receiver's loopback address: a rebinding attack on the worker.
    dispatcher = WebhookDispatcher("s", allow_private=False, base_delay_s=0.01,
                                   resolver=_resolver({"hooks.example": ["127.0.0.1"]}))  # fmt: skip
    _deliver(dispatcher, url)
    assert receiver.requests == [], "a delivery reached an internal address"
    assert dispatcher.stats.blocked == 1 and dispatcher.stats.failed == 1 and dispatcher.stats.attempts == 1


def test_literal_internal_urls_are_blocked_at_delivery_too(receiver: Receiver) -> None:
    dispatcher = WebhookDispatcher("s", allow_private=False, base_delay_s=0.01)
    _deliver(dispatcher, receiver.url)  # http://127.0.0.1:PORT/...
    assert receiver.requests == [] and dispatcher.stats.blocked == 1


def test_every_attempt_resolves_once_and_connects_to_the_checked_address(receiver: Receiver) -> None:
    receiver.statuses = [503]  # one retry: the name is resolved and checked again for it
    calls: list[str] = []
    dispatcher = WebhookDispatcher("s", allow_private=True, base_delay_s=0.01,
                                   resolver=_resolver({"hooks.example": ["127.0.0.1"]}, calls))  # fmt: skip
    _deliver(dispatcher, _named(receiver))
    assert len(receiver.requests) == 2 and dispatcher.stats.delivered == 1
    assert calls == ["hooks.example", "hooks.example"], "one resolution per attempt, none by the HTTP client"
    port = receiver.url.split(":")[2].split("/")[0]
    assert {headers["Host"] for _, headers, _ in receiver.requests} == {f"hooks.example:{port}"}


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    with running_receiver() as inside:
        receiver.redirect_to = inside.url
        dispatcher = WebhookDispatcher("s", allow_private=True, base_delay_s=0.01)
        _deliver(dispatcher, receiver.url)
        assert len(receiver.requests) == 1 and inside.requests == []
    assert dispatcher.stats.failed == 1 and dispatcher.stats.delivered == 0 and dispatcher.stats.attempts == 1


@given(url=st.from_regex(WEBHOOK_URL, fullmatch=True))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_url_the_schema_accepts_parses_and_is_only_ever_refused_for_its_address(url: str) -> None:
    """A URL matching the published pattern is well-formed for the server too: at submit it is either
    accepted or refused because of where it points (never a shape error, never a crash)."""
    assert validate_url(url) == url

    def unknown(host: str, _port: int) -> list[str]:
        raise OSError(f"{host}: not known")

    try:
        check_at_submit(url, allow_private=False, resolver=unknown)
    except BlockedTarget as error:
        assert "MEMAUDIT_WEBHOOK_ALLOW_PRIVATE" in str(error)
