"""Email backends playing the mail server in outbox tests: Django's locmem backend
(messages land in ``django.core.mail.outbox``) that refuses some recipients, or that
holds a send until the test lets it go."""

import threading
from smtplib import SMTPRecipientsRefused

from django.core.mail.backends.locmem import EmailBackend


class BouncingBackend(EmailBackend):
    """Refuses every recipient whose address contains ``bounce``, as an SMTP server
    would; delivers the others."""

    def send_messages(self, messages):
        for message in messages:
            refused = [to for to in message.to if "bounce" in to]
            if refused:
                raise SMTPRecipientsRefused({to: (550, b"mailbox unavailable") for to in refused})
        return super().send_messages(messages)


class GatedBackend(EmailBackend):
    """Each send announces itself on ``entered`` and waits for ``gate``: the test looks
    at the database while a drain is talking to the mail server."""

    entered = threading.Event()
    gate = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.entered = threading.Event()
        cls.gate = threading.Event()

    def send_messages(self, messages):
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return super().send_messages(messages)


class RendezvousBackend(EmailBackend):
    """The first send of each drain thread waits until ``parties`` drains are sending
    at once, so overlapping drains really overlap."""

    barrier = threading.Barrier(2)
    _local = threading.local()

    @classmethod
    def reset(cls, parties: int) -> None:
        cls.barrier = threading.Barrier(parties)
        cls._local = threading.local()

    def send_messages(self, messages):
        if not getattr(self._local, "met", False):
            self._local.met = True
            self.barrier.wait(timeout=60)
        return super().send_messages(messages)
