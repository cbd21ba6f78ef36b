"""Channels: hand a rendered message to a provider, keyed by the delivery id.

* ``SmtpChannel``: e-mail over SMTP (aiosmtplib); the delivery id is in the
  ``Message-ID`` header (``<delivery-123@domain>``) so a receiving system can
  drop a repeated message.
* ``HttpChannel``: SMS and push providers over HTTP (aiohttp, keep-alive
  connections shared by all concurrent sends). The request is a
  ``POST`` of a JSON object::

      SMS:  {"delivery_id": "123", "channel": "sms", "to": "+4915112345678", "text": "..."}
      push: {"delivery_id": "123", "channel": "push", "tokens": ["..."],
             "title": "...", "body": "...", "data": {"k": "v"}}

  with the headers ``Idempotency-Key: <delivery_id>``, ``X-Eventline-Timestamp:
  <unix seconds>`` and ``X-Eventline-Signature: sha256=<hex HMAC-SHA256 of
  "<timestamp>.<body>" with the shared secret>``. A 2xx reply is success; 408,
  429 and 5xx replies and connection errors are transient (retried with
  backoff); other replies are permanent failures.
* ``FileSink``: writes each message as a readable text file (local development).

Errors: ``PermanentError`` (do not retry) and ``TransientError`` (retry later).
"""

from __future__ import annotations

import asyncio
import copy
import email.message
import io
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.policy import Compat32
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiohttp
import aiohttp.abc
import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender

from eventline_campaigns.model import CHANNEL_NAMES, SMS, Message
from eventline_shared import signatures

_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP  # readable in the raw message, unlike base64


class _Compat32AsIs(Compat32):
    """The compat32 policy aiosmtplib writes a classic message with, minus its cost on the
    common header: compat32 folds every header through an ``email.header.Header`` (~15 µs
    each, ten a message), which leaves a printable ASCII value on one line that fits, with
    no leading, trailing or doubled space, as it is; such a value is written as it is here
    (the same bytes: tests/unit/test_smtp_wire.py), any other one folded by compat32."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if (
            isinstance(value, str)
            and value.isascii()
            and value.isprintable()
            and len(name) + len(value) + 2 <= (self.max_line_length or 78)
            and not value.startswith(" ")
            and not value.endswith(" ")
            and "  " not in value
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_AS_IS = {cte: _Compat32AsIs(cte_type=cte) for cte in ("8bit", "7bit")}


def smtp_wire(mail: email.message.Message, *, eight_bit: bool) -> bytes:
    """``mail`` as aiosmtplib's ``send_message`` would put it on the wire (its
    ``flatten_message`` of a classic message, no Bcc header), with ``_Compat32AsIs``. A copy is
    written, as there: a multipart message's boundary, drawn when it is written, stays unset."""
    with io.BytesIO() as out:
        BytesGenerator(out, policy=_AS_IS["8bit" if eight_bit else "7bit"]).flatten(copy.copy(mail))
        return out.getvalue()


async def send_mail(client: aiosmtplib.SMTP, mail: email.message.Message) -> None:
    """``client.send_message(mail)`` for a message built by ``SmtpChannel.build`` (no Bcc, no
    Resent- headers), its headers written by ``smtp_wire``: the same envelope, options and
    bytes for a third less CPU (the folding of its headers was most of a message's)."""
    sender = extract_sender(mail)
    recipients = extract_recipients(mail)
    if sender is None or not recipients:
        raise ValueError("no From or no To header in the message")
    if client.is_ehlo_or_helo_needed:  # the extensions below are the server's answer to it
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()
    options = []
    if not (sender + "".join(recipients)).isascii():
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "An address containing non-ASCII characters was provided, but "
                "SMTPUTF8 is not supported by this server"
            )
        options.append("SMTPUTF8")
    eight_bit = client.supports_extension("8BITMIME")
    if eight_bit:
        options.append("BODY=8BITMIME")
    await client.sendmail(sender, recipients, smtp_wire(mail, eight_bit=eight_bit), mail_options=options)


def _text_part(body: str, subtype: str) -> email.message.Message:
    part = email.message.Message()
    part["Content-Type"] = f"text/{subtype}"
    part.set_payload(body, _UTF8)  # adds the charset, MIME-Version and the transfer encoding
    return part


class PermanentError(Exception):
    """The provider refused the message for good."""


class TransientError(Exception):
    """The provider could not be reached or asked to retry."""


class Channel(Protocol):
    """A provider of one or more channels: sends one message at a time."""

    async def send(self, message: Message) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BulkChannel(Channel, Protocol):
    """A channel that takes many messages in one call (the file sink: writes off the event loop)."""

    async def send_many(self, messages: list[Message]) -> list[str | None]:
        """Send each message; for each, None or why it failed (to be retried)."""
        ...


async def with_retries(call: Callable[[], Any], attempts: int, base_delay_s: float = 0.05) -> int:
    """Run ``call`` until it succeeds or fails permanently; returns how many calls were made.

    Transient errors are retried with exponential backoff and jitter-free
    delays (base, 2x base, ...); the last one is re-raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            await call()
            return attempt
        except TransientError:
            if attempt == attempts:
                raise
            await asyncio.sleep(base_delay_s * 2 ** (attempt - 1))
    return attempts


class SmtpChannel:
    """E-mail over SMTP through up to ``concurrency`` connections kept open between messages.

    A message costs MAIL, RCPT and DATA on an open connection instead of a TCP
    (and TLS) handshake, EHLO, login and QUIT of its own. A connection idle for
    ``idle_s`` is closed rather than reused (servers drop idle clients), one
    that fails is closed, and a message that fails on a reused connection
    because the server had dropped it is tried once more on a new one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        domain: str,
        username: str = "",
        password: str = "",
        start_tls: bool = False,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        idle_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.domain = domain
        self.username = username or None
        self.password = password or None
        self.start_tls = start_tls
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self._limit = asyncio.Semaphore(concurrency)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (connection, idle since)

    def build(self, message: Message) -> email.message.Message:
        """The MIME message: text, or text and HTML alternatives, UTF-8 and quoted-printable.

        Built with the classic MIME classes: EmailMessage's header registry parsed the
        addresses of every message again (1.2 ms a message against 0.47 ms). What it
        guarded against is checked here: no header value may break its line.
        """
        to, subject = message.to[0], message.subject
        if any(c in value for value in (to, subject) for c in "\r\n"):
            raise PermanentError("a header value contains a line break")
        text = _text_part(message.text or "", "plain")
        mail = text
        if message.html:
            mail = MIMEMultipart("alternative")
            mail.attach(text)
            mail.attach(_text_part(message.html, "html"))
        mail["From"] = self.sender
        mail["To"] = to
        mail["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = f"<delivery-{message.delivery_id}@{self.domain}>"
        # The delivery id where SendGrid (custom arguments) and Postmark (metadata) echo it in
        # every status callback, opens and clicks included (eventline_gateway.callbacks).
        mail["X-SMTPAPI"] = f'{{"unique_args": {{"deliveryId": "{message.delivery_id}"}}}}'
        mail["X-PM-Metadata-deliveryId"] = str(message.delivery_id)
        if message.unsubscribe:
            if any(c in url for url in message.unsubscribe for c in "\r\n<>,"):
                raise PermanentError("an unsubscribe URL contains a line break or a delimiter")
            mail["List-Unsubscribe"] = ", ".join(f"<{url}>" for url in message.unsubscribe)
            if message.unsubscribe[0].startswith("https://") or message.unsubscribe[0].startswith("http://"):
                mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return mail

    async def _open(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            start_tls=self.start_tls,
            timeout=self.timeout_s,
        )
        await client.connect()  # also EHLO, STARTTLS and login as configured
        return client

    def _reusable(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < self.idle_s:
                return client
            client.close()
        return None

    async def send(self, message: Message) -> None:
        mail = self.build(message)
        async with self._limit:
            client = self._reusable()
            try:
                if client is not None:
                    try:
                        await send_mail(client, mail)
                    except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                        client.close()  # dropped while idle: once more on a new connection
                        client = None
                if client is None:
                    client = await self._open()
                    await send_mail(client, mail)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                raise PermanentError(f"recipient refused: {exc}") from None
            except aiosmtplib.SMTPResponseException as exc:
                if 400 <= exc.code < 500:
                    raise TransientError(f"SMTP {exc.code}: {exc.message}") from None
                raise PermanentError(f"SMTP {exc.code}: {exc.message}") from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise TransientError(f"SMTP server unreachable: {exc}") from None
            else:
                self._idle.append((client, time.monotonic()))
                client = None
            finally:
                if client is not None:
                    client.close()  # after a failure the session's state is unknown

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


signature = signatures.sign
"""The X-Eventline-Signature header value of a provider call."""


MAX_REPLY_BYTES = 64 * 1024
"""The most of a provider's reply that is read; a longer one costs its connection."""


class HttpChannel:
    """An SMS or push provider behind an HTTP endpoint (see the module docstring)."""

    def __init__(self, url: str, secret: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Created on first use: an aiohttp session belongs to the running event loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # a provider's cookies must not leak between calls
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    @staticmethod
    def payload(message: Message) -> dict[str, Any]:
        if message.channel == SMS:
            return {
                "delivery_id": str(message.delivery_id),
                "channel": "sms",
                "to": message.to[0],
                "text": message.text,
            }
        return {
            "delivery_id": str(message.delivery_id),
            "channel": "push",
            "tokens": message.to,
            "title": message.subject,
            "body": message.text,
            "data": message.data,
        }

    async def send(self, message: Message) -> None:
        body = json.dumps(self.payload(message), ensure_ascii=False, separators=(",", ":")).encode()
        await self._post(self.url, body, message.delivery_id)

    async def _post(self, url: str, body: bytes, delivery_id: int) -> None:
        """POST a signed body keyed by the delivery id; raise PermanentError or TransientError."""
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(delivery_id),
            "X-Eventline-Timestamp": timestamp,
            "X-Eventline-Signature": signature(self.secret, timestamp, body),
        }
        try:
            async with self.session.post(url, data=body, headers=headers) as reply:
                status = reply.status
                content = await self._read_reply(reply)
        except RefusedAddress as exc:
            raise PermanentError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"provider unreachable: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return
        detail = f"provider replied {status}: {content[:200].decode(errors='replace')}"
        if status in (408, 429) or status >= 500:
            raise TransientError(detail)
        raise PermanentError(detail)

    @staticmethod
    async def _read_reply(reply: aiohttp.ClientResponse) -> bytes:
        """The reply's body, read to the end when it is small so that the connection goes back
        to the pool (aiohttp closes one whose body is left unread); at most MAX_REPLY_BYTES."""
        if reply.content_length is not None and reply.content_length <= MAX_REPLY_BYTES:
            return await reply.read()
        return await reply.content.read(MAX_REPLY_BYTES)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class RefusedAddress(aiohttp.ClientConnectionError):
    """A webhook host resolved to an address webhooks may not reach (SSRF)."""


def forbidden(address: str) -> str | None:
    """Why a webhook may not connect to ``address`` (loopback, private...); None when it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, found in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("shared (carrier-grade NAT)", ip in ipaddress.ip_network("100.64.0.0/10")),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if found:
            return reason
    return None


class PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """Resolves as usual, then refuses hosts with an address webhooks may not reach.

    Checking in the resolver (not before the request) means the addresses checked are the
    ones connected to: a name that changes its answer between a check and the connection
    (DNS rebinding) gains nothing.
    """

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        found = await self._resolver.resolve(host, port, family)
        for entry in found:
            reason = forbidden(entry["host"])
            if reason is not None:
                raise RefusedAddress(f"refused: {host} resolves to {entry['host']}, a {reason} address")
        return found

    async def close(self) -> None:
        await self._resolver.close()


class WebhookChannel(HttpChannel):
    """A campaign's webhook: its rendered JSON body POSTed to its own URL, signed like the
    provider calls (see HttpChannel). Hosts resolving to loopback, link-local, private,
    shared or reserved addresses are refused unless ``allow_private`` (SSRF)."""

    def __init__(self, secret: str, *, timeout_s: float = 5.0, allow_private: bool = False) -> None:
        super().__init__("", secret, timeout_s=timeout_s)
        self.allow_private = allow_private

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=100, resolver=None if self.allow_private else PublicOnlyResolver()
            )
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, cookie_jar=aiohttp.DummyCookieJar(), connector=connector
            )
        return self._session

    async def send(self, message: Message) -> None:
        try:
            json.loads(message.text)
        except ValueError as exc:
            raise PermanentError(f"the rendered body is not JSON: {exc}") from None
        host = urllib.parse.urlsplit(message.to[0]).hostname or ""
        if not self.allow_private:
            try:
                reason = forbidden(host)  # an address in the URL is never resolved: check it here
            except ValueError:
                reason = None  # a name: checked by the resolver
            if reason is not None:
                raise PermanentError(f"refused: {host} is a {reason} address")
        await self._post(message.to[0], message.text.encode(), message.delivery_id)


_SINK_FILE = re.compile(r"^(\d+)-[a-z]+\.txt$")


class FileSink:
    """Writes every message as ``<delivery_id>-<channel>.txt`` in a folder, for people to read.

    The folder mirrors the ledger: files whose delivery the ledger no longer
    holds (their customer was erased) are removed (``erasure.SinkJanitor``).

    Writing the same delivery again replaces the file: the delivery id is the
    idempotency key here too. ``observer`` (if any) is called after each write.
    """

    def __init__(self, directory: str, observer: Callable[[Message], None] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.observer = observer

    def path(self, message: Message) -> Path:
        return self._path(message.delivery_id, CHANNEL_NAMES[message.channel])

    def _path(self, delivery_id: int, channel_name: str) -> Path:
        return self.directory / f"{delivery_id:012d}-{channel_name}.txt"

    def delivery_ids(self) -> set[int]:
        """The deliveries that have a file here (blocking: call it from a worker thread)."""
        found = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                match = _SINK_FILE.match(entry.name)
                if match:
                    found.add(int(match.group(1)))
        return found

    def forget(self, delivery_ids: Iterable[int]) -> int:
        """Remove the files of these deliveries; returns how many (blocking: call it from a worker thread)."""
        removed = 0
        for delivery_id in delivery_ids:
            for channel_name in CHANNEL_NAMES.values():
                try:
                    self._path(delivery_id, channel_name).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    @staticmethod
    def format(message: Message) -> str:
        lines = [
            f"Delivery: {message.delivery_id}",
            f"Channel: {CHANNEL_NAMES[message.channel]}",
            f"To: {', '.join(message.to)}",
        ]
        if message.subject:
            lines.append(f"Subject: {message.subject}")
        for key, value in sorted(message.data.items()):
            lines.append(f"Data-{key}: {value}")
        lines.append("")
        lines.append(message.text)
        if message.html:
            lines += ["", "--- HTML ---", message.html]
        return "\n".join(lines) + "\n"

    def _write(self, message: Message) -> None:
        fd = os.open(self.path(message), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.format(message).encode())
        finally:
            os.close(fd)

    async def send(self, message: Message) -> None:
        try:
            self._write(message)
        except OSError as exc:
            raise TransientError(f"cannot write message file: {exc}") from None
        if self.observer is not None:
            self.observer(message)

    def _write_all(self, messages: list[Message]) -> list[str | None]:
        errors: list[str | None] = []
        for message in messages:
            try:
                self._write(message)
                errors.append(None)
            except OSError as exc:
                errors.append(f"cannot write message file: {exc}")
        return errors

    async def send_many(self, messages: list[Message]) -> list[str | None]:
        """Write many messages in a worker thread (the event loop keeps rendering); an error per message."""
        errors = (
            await asyncio.to_thread(self._write_all, messages)
            if len(messages) > 8
            else self._write_all(messages)
        )
        if self.observer is not None:
            for message, error in zip(messages, errors, strict=True):
                if error is None:
                    self.observer(message)
        return errors

    async def aclose(self) -> None:
        return None
