"""The demo's campaigns, defined once: ``eventline demo`` creates them, the tests and the
benchmarks build theirs from the same functions (with their own wording where they check it).

- back in stock: the system event ``ItemInStock`` reaches every customer whose
  ``StockSubscription`` event names the item of the trigger (``$item_id``);
- password recovery: the customer event ``PasswordRecoveryRequested`` sends its
  ``reset_link`` to that customer.
"""

from __future__ import annotations

from eventline.campaigns.v1 import campaigns_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg


def on_customer_event(event_name: str) -> campaigns_pb2.Trigger:
    """A trigger: every customer event named ``event_name``."""
    return campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name=event_name))


def on_system_event(event_name: str) -> campaigns_pb2.Trigger:
    """A trigger: every system event named ``event_name`` (reaching the campaign's audience)."""
    return campaigns_pb2.Trigger(system_event=campaigns_pb2.SystemEventTrigger(event_name=event_name))


def email_campaign(
    trigger: campaigns_pb2.Trigger,
    audience: seg.Filter | None = None,
    /,
    *,
    display_name: str,
    subject: str,
    text_body: str,
    html_body: str = "",
) -> campaigns_pb2.Campaign:
    """One e-mail to each customer ``trigger`` reaches (those of ``audience``, if given)."""
    return campaigns_pb2.Campaign(
        display_name=display_name,
        trigger=trigger,
        audience=audience,
        actions=[
            campaigns_pb2.Action(
                email=campaigns_pb2.EmailAction(subject=subject, text_body=text_body, html_body=html_body)
            )
        ],
    )


def subscribers_of_the_item() -> seg.Filter:
    """Customers with a ``StockSubscription`` event whose ``item_id`` is the trigger's ``item_id``."""
    return seg.Filter(
        event=seg.EventCondition(
            name="StockSubscription",
            predicates=[
                seg.Predicate(
                    field="item_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$item_id")
                )
            ],
        )
    )


BACK_IN_STOCK = {
    "display_name": "Back in stock (demo)",
    "subject": "{{ client.eventContext.item_name }} is back",
    "text_body": "Good news: {{ client.eventContext.item_name }} is back in stock.",
}
PASSWORD_RECOVERY = {
    "display_name": "Password recovery (demo)",
    "subject": "Reset your password",
    "text_body": "Reset it here: {{ client.eventContext.reset_link }}",
}


def back_in_stock(**wording: str) -> campaigns_pb2.Campaign:
    """``ItemInStock`` (a system event) e-mails the subscribers of the item; ``wording``
    replaces the demo's display name, subject or bodies."""
    return email_campaign(
        on_system_event("ItemInStock"), subscribers_of_the_item(), **(BACK_IN_STOCK | wording)
    )


def password_recovery(**wording: str) -> campaigns_pb2.Campaign:
    """``PasswordRecoveryRequested`` (a customer event) e-mails that customer their reset link;
    ``wording`` replaces the demo's display name, subject or bodies."""
    return email_campaign(on_customer_event("PasswordRecoveryRequested"), **(PASSWORD_RECOVERY | wording))
