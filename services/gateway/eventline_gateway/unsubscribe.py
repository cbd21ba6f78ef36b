"""One-click unsubscribe (RFC 8058): ``/v1/unsubscribe/{token}``.

Every marketing e-mail carries ``List-Unsubscribe: <https://…/v1/unsubscribe/TOKEN>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. A mailbox provider's one-click
button POSTs ``List-Unsubscribe=One-Click`` to that URL: the customer's consent for the
channel is withdrawn at once (``UpsertCustomer`` of that consent alone), an
``unsubscribed`` customer event goes on their timeline (its id derived from the token, so
a repeated POST stores it once), and the answer is 200. A GET (a person following the link,
or a link scanner, which must not unsubscribe anybody) shows a short page with a button that
POSTs the same form. Pages are plain HTML: no scripts, a policy that forbids them.

Tokens are signed (``eventline_shared.unsubscribe``): a forged or edited one is 404, and a
token unsubscribes the customer and channel it names only. A customer unknown to
ingestion (erased since) is not created again: the page says there is nothing to do.
"""

from __future__ import annotations

import hashlib
import html

import grpc
from aiohttp import web
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_gateway import errors
from eventline_shared.observability import logs
from eventline_shared.unsubscribe import Unsubscribe, read_token

CHANNEL_WORDS = {"email": "e-mail", "sms": "text messages"}
CONSENT_FIELDS = {"email": "email_consent", "sms": "sms_consent"}
EVENT_NAME = "unsubscribed"


class Unsubscriber:
    def __init__(self, secret: str, ingestion: ingestion_pb2_grpc.IngestionServiceStub, service_key: str) -> None:
        self.secret = secret
        self.ingestion = ingestion
        self.service_key = service_key

    def metadata(self) -> list[tuple[str, str]]:
        found = [("x-request-id", logs.request_id.get())]
        if self.service_key:
            found.append(("authorization", f"Bearer {self.service_key}"))
        return found

    async def known(self, customer_id: str) -> bool:
        try:
            await self.ingestion.GetCustomer(
                ingestion_pb2.GetCustomerRequest(customer_id=customer_id), metadata=self.metadata(), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise errors.from_rpc_error(error, "ingestion") from None
        return True

    async def withdraw(self, token: str, unsubscribe: Unsubscribe) -> None:
        """Withdraw the consent and put the event on the timeline (both idempotent)."""
        field = CONSENT_FIELDS[unsubscribe.channel]
        customer = common_pb2.Customer(customer_id=unsubscribe.customer_id)
        setattr(customer, field, common_pb2.CONSENT_DENIED)
        request = ingestion_pb2.UpsertCustomerRequest(customer=customer)
        request.update_mask.paths.append(field)
        event = ingestion_pb2.TrackCustomerEventRequest(
            event_id="unsubscribe-" + hashlib.sha256(token.encode()).hexdigest()[:40],
            customer_id=unsubscribe.customer_id,
            name=EVENT_NAME,
        )
        event.context["channel"].string_value = unsubscribe.channel
        event.context["campaign_id"].string_value = unsubscribe.campaign_id
        try:
            await self.ingestion.UpsertCustomer(request, metadata=self.metadata(), timeout=30)
            await self.ingestion.TrackCustomerEvent(event, metadata=self.metadata(), timeout=30)
        except grpc.aio.AioRpcError as error:
            raise errors.from_rpc_error(error, "ingestion") from None


UNSUBSCRIBER = web.AppKey("unsubscriber", Unsubscriber)


def page(title: str, text: str, status: int = 200, form: bool = False) -> web.Response:
    """A plain HTML page: no script, no style sheet, nothing loaded from anywhere."""
    button = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        if form
        else ""
    )
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p>{button}</body></html>"
    )
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = "default-src 'none'; form-action 'self'"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def unsubscribe(request: web.Request) -> web.Response:
    """GET: a page with a button; POST: unsubscribe at once (RFC 8058 one-click)."""
    unsubscriber = request.app.get(UNSUBSCRIBER)
    token = request.match_info["token"]
    found = read_token(unsubscriber.secret, token) if unsubscriber is not None else None
    if unsubscriber is None or found is None:
        return page("Link not valid", "This unsubscribe link is not valid.", 404)
    what = CHANNEL_WORDS[found.channel]
    if request.method == "GET":
        return page("Unsubscribe", f"Stop receiving {what} from us?", form=True)
    await request.read()  # the body is "List-Unsubscribe=One-Click"; nothing else is needed
    if not await unsubscriber.known(found.customer_id):
        return page("Nothing to do", f"You receive no {what} from us.")
    await unsubscriber.withdraw(token, found)
    return page("Unsubscribed", f"You will receive no more {what} from us.")
