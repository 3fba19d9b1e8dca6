"""Every email the platform sends is rendered here from two templates: an HTML part
(``templates/emails/<name>.html``, inline CSS only: mail clients drop ``<style>`` and
external sheets, and no remote images, which clients block) and the plain-text
alternative (``<name>.txt``) that text-only clients and spam filters read."""

from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string


def email_render(
    *, template: str, subject: str, to: list[str], context: dict[str, Any]
) -> EmailMultiAlternatives:
    context = {"app_url": settings.APP_URL, "subject": subject, **context}
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"emails/{template}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=to,
    )
    message.attach_alternative(render_to_string(f"emails/{template}.html", context), "text/html")
    return message
