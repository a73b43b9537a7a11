"""The default `send_email` backend: smtplib, to the SMTP server the host configures."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from ..errors import HostCallError
from . import chain


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int = 25
    sender: str = "plughost@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0


class Mailer:
    def __init__(self, settings: SMTPSettings | None) -> None:
        self.settings = settings

    def send(self, plugin: str, to: list[str], subject: str, body: str,
             html: str | None) -> None:
        s = self.settings
        if s is None:
            raise HostCallError("send_email: no SMTP server is configured on this host",
                                plugin=plugin)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = s.sender, ", ".join(to), subject
        msg["X-Plughost-Plugin"] = plugin
        msg.set_content(body)
        if html:
            msg.add_alternative(html, subtype="html")
        left = chain.path().left()  # never outlive the call that asked
        timeout = s.timeout if left is None else max(0.001, min(s.timeout, left))
        try:
            with smtplib.SMTP(s.host, s.port, timeout=timeout) as smtp:
                if s.starttls:
                    smtp.starttls()
                if s.username:
                    smtp.login(s.username, s.password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise HostCallError(f"send_email: {exc}", plugin=plugin) from None
