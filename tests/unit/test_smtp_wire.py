"""The e-mail channel writes the bytes aiosmtplib's ``send_message`` wrote (issue 12: its header
folding was a third of a message's CPU; ``smtp_wire`` skips it where it changes nothing)."""

from __future__ import annotations

import email.policy
import string

from aiosmtplib.email import flatten_message
from hypothesis import given, settings
from hypothesis import strategies as st

from eventline_campaigns.channels import SmtpChannel, _Compat32AsIs, smtp_wire
from eventline_campaigns.model import EMAIL, Message

NAMES = st.sampled_from(
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "X-SMTPAPI",
        "X-PM-Metadata-deliveryId",
        "List-Unsubscribe",
    ]
)
ASCII_VALUES = st.text(alphabet=string.printable, max_size=120)


def folded(policy: email.policy.Compat32, name: str, value: str) -> bytes | type[Exception]:
    try:
        return policy.fold_binary(name, value)
    except Exception as exc:  # compat32 refuses some values: so must the other
        return type(exc)


@settings(max_examples=3000)
@given(NAMES, st.one_of(ASCII_VALUES, st.text(max_size=120)), st.sampled_from(["8bit", "7bit"]))
def test_a_header_is_written_as_compat32_folds_it(name: str, value: str, cte: str) -> None:
    reference = email.policy.compat32.clone(cte_type=cte)
    assert folded(_Compat32AsIs(cte_type=cte), name, value) == folded(reference, name, value)


MESSAGES = st.builds(
    Message,
    delivery_id=st.integers(min_value=1, max_value=2**62),
    channel=st.just(EMAIL),
    to=st.lists(st.emails(), min_size=1, max_size=1),
    subject=st.text(max_size=150).filter(lambda s: "\r" not in s and "\n" not in s),
    html=st.text(max_size=300),
    text=st.text(max_size=300),
    unsubscribe=st.lists(
        st.sampled_from(["https://u.example/unsubscribe?t=abc", "mailto:unsubscribe@example.com"]), max_size=2
    ),
)


@settings(max_examples=500, deadline=None)
@given(MESSAGES, st.booleans())
def test_a_message_goes_on_the_wire_as_send_message_wrote_it(message: Message, eight_bit: bool) -> None:
    mail = SmtpChannel("127.0.0.1", 25, "Eventline <noreply@example.com>", domain="d.test").build(message)
    if mail.is_multipart():
        mail.set_boundary("===============1234567890==")  # else drawn at random by each writer
    reference = flatten_message(mail, cte_type="8bit" if eight_bit else "7bit")
    assert smtp_wire(mail, eight_bit=eight_bit) == reference
