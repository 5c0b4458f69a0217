"""Where a webhook may go (gateway/jobs/ssrf.py) and how it is signed (gateway/jobs/signing.py),
the signature checked by the reference `standardwebhooks` implementation."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.jobs import signing
from gateway.jobs.ssrf import ForbiddenTargetError, TargetPolicy, check_url, is_public
from gateway.jobs.webhooks import WebhookSender
from tests.fakes.webhook_receiver import running_receiver

NOT_PUBLIC = [
    "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "233.252.0.1", "192.0.2.1", "198.18.0.1", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff0e::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1", "2002:a00:1::1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_global_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(ForbiddenTargetError, match="not a public address"):
        TargetPolicy().check_address(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    TargetPolicy().check_address(address)


def test_an_allowed_range_admits_its_addresses_only() -> None:
    policy = TargetPolicy.parse(["127.0.0.0/8", "fd00::/8"], allow_http=True)
    policy.check_address("127.0.0.1")
    policy.check_address("::ffff:127.0.0.1")  # the IPv4 address it maps
    policy.check_address("fd00::5")
    for address in ("::1", "10.0.0.1", "169.254.169.254"):
        with pytest.raises(ForbiddenTargetError):
            policy.check_address(address)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://8.8.8.8/hook", "https"),
        ("ftp://8.8.8.8/hook", "https://"),
        ("https://user:pw@8.8.8.8/hook", "credentials"),
        ("https:///hook", "https://"),
        ("https://8.8.8.8:99999/", "valid URL"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://[::ffff:7f00:1]/hook", "not a public address"),
        ("https://localhost/hook", "not a public address"),  # resolved: every address is checked
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
def test_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(ForbiddenTargetError, match=why):
        asyncio.run(check_url(url, TargetPolicy()))


def test_a_public_https_url_passes() -> None:
    target = asyncio.run(check_url("https://8.8.8.8/hook", TargetPolicy()))
    assert (target.host, target.port) == ("8.8.8.8", 443)


def test_signatures_verify_with_the_reference_implementation() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.key_of(secret)) == 32
    body = b'{"type":"image.job.succeeded","data":{"id":"job_1"}}'
    now = int(time.time())
    headers = signing.headers(signing.key_of(secret), "job_1", now, body)
    assert Webhook(secret).verify(body, headers) == {"type": "image.job.succeeded", "data": {"id": "job_1"}}
    with pytest.raises(Exception, match="signature"):
        Webhook(signing.new_secret()).verify(body, headers)  # another secret
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, {**headers, "webhook-id": "job_2"})  # the id is signed too


def test_delivery_checks_the_address_it_connects_to() -> None:
    """A name that resolves to loopback is refused when the delivery connects, with a server
    listening there: the check is not left to submission time (DNS rebinding)."""

    async def send(policy: TargetPolicy, url: str) -> tuple[int | None, str | None]:
        sender = WebhookSender(policy, timeout_s=5)
        try:
            attempt = await sender.send(url, b"k" * 32, "job_1", b"{}")
        finally:
            await sender.aclose()
        return attempt.status_code, attempt.error

    with running_receiver() as receiver:
        port = receiver.base.rsplit(":", 1)[1]
        strict = TargetPolicy(allow_http=True)
        status, error = asyncio.run(send(strict, f"http://localhost:{port}/hook"))
        assert status is None and error is not None and error.startswith("refused"), error
        status, error = asyncio.run(send(strict, f"http://127.0.0.1:{port}/hook"))
        assert status is None and error is not None and error.startswith("refused"), error
        assert receiver.deliveries() == []
        allowed = TargetPolicy.parse(["127.0.0.0/8"], allow_http=True)
        assert asyncio.run(send(allowed, f"http://127.0.0.1:{port}/hook")) == (204, None)
        assert len(receiver.deliveries()) == 1


def test_redirects_are_not_followed() -> None:
    async def send(url: str) -> tuple[int | None, str | None]:
        sender = WebhookSender(TargetPolicy.parse(["127.0.0.0/8"], allow_http=True), timeout_s=5)
        try:
            attempt = await sender.send(url, b"k" * 32, "job_1", b"{}")
        finally:
            await sender.aclose()
        return attempt.status_code, attempt.error

    with running_receiver() as receiver:
        receiver.statuses[:] = [307]
        assert asyncio.run(send(receiver.url())) == (307, "answered 307")  # a failure, not followed
        assert len(receiver.deliveries()) == 1
