import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import user_ensure_demo
from markets.services import coins_seed

DEMO_EMAIL = "demo@cryptovault.local"


class Command(BaseCommand):
    help = "Create the tracked coins and, with --with-user, a verified demo user. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--with-user", action="store_true", help="create a demo user")
        parser.add_argument("--email", default=DEMO_EMAIL)
        parser.add_argument("--password", default=None, help="default: a random password")

    def handle(self, *args, **options):
        coins = coins_seed(coin_ids=settings.TRACKED_COINS)
        for index, coin in enumerate(coins, start=1):
            self.stdout.write(f"[{index}/{len(coins)}] coin {coin.id}")
        self.stdout.write(self.style.SUCCESS(f"{len(coins)} tracked coins ready."))
        if options["with_user"]:
            password = options["password"] or secrets.token_urlsafe(12)
            user, created = user_ensure_demo(email=options["email"], password=password)
            if created:
                self.stdout.write(
                    self.style.SUCCESS(f"Demo user: {user.email} / password: {password}")
                )
            else:
                self.stdout.write(f"Demo user {user.email} already exists (password unchanged).")
