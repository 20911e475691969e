"""Vendor payloads → canonical Touchpoints: one module per source, pure functions.

Where does an email webhook become a Touchpoint? ``ingest/webhooks/sendgrid.py``
(and ``mailgun.py``); SMS: ``twilio.py``; support: ``zendesk.py``; ads: ``ads.py``;
Segment-style tracking: ``segment.py``; our own API: ``native.py``.
"""

from ingest.webhooks.ads import parse_ads
from ingest.webhooks.base import Parsed, Pii, Rejection, decode_json
from ingest.webhooks.mailgun import mailgun_signature_fields, parse_mailgun, parse_mailgun_event
from ingest.webhooks.native import parse_native
from ingest.webhooks.segment import IdentityMap, parse_segment
from ingest.webhooks.sendgrid import parse_sendgrid
from ingest.webhooks.twilio import decode_form, form_fields, parse_twilio
from ingest.webhooks.zendesk import parse_zendesk

__all__ = [
    "IdentityMap",
    "Parsed",
    "Pii",
    "Rejection",
    "decode_form",
    "decode_json",
    "form_fields",
    "mailgun_signature_fields",
    "parse_ads",
    "parse_mailgun",
    "parse_mailgun_event",
    "parse_native",
    "parse_segment",
    "parse_sendgrid",
    "parse_twilio",
    "parse_zendesk",
]
