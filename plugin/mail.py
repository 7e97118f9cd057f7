"""Outgoing mail over SMTP (stdlib smtplib), with a timeout; the password is a secret reference."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from plugin.config import resolve_secret

log = logging.getLogger("trailmark.mail")


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


def build_message(*, sender: str, to: str, subject: str, text: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(text)
    return msg


def send(cfg: Mapping[str, Any], *, to: str, subject: str, text: str) -> None:
    """Send one plain-text message through the configured SMTP server."""
    if not cfg["enabled"]:
        raise MailError("mail is disabled; set [mail] enabled = true and an SMTP server in the district file")
    msg = build_message(sender=cfg["from_address"], to=to, subject=subject, text=text)
    try:
        if cfg["security"] == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(cfg["smtp_host"], cfg["smtp_port"],
                                                    timeout=cfg["timeout_seconds"],
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(cfg["smtp_host"], cfg["smtp_port"], timeout=cfg["timeout_seconds"])
        with client:
            if cfg["security"] == "starttls":
                client.starttls(context=ssl.create_default_context())
            if cfg.get("username"):
                client.login(cfg["username"], resolve_secret(cfg["password"], key="mail.password"))
            client.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("mail.failed host=%s reason=%s", cfg["smtp_host"], type(exc).__name__)
        raise MailError(f"could not send mail through {cfg['smtp_host']}:{cfg['smtp_port']} ({exc})") from None
    log.info("mail.sent subject=%r", subject)
