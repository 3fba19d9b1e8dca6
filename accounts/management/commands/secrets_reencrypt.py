from django.core.management.base import BaseCommand

from accounts import services


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored API key secret and TOTP secret under the first of "
        "API_KEY_ENCRYPTION_KEYS (key rotation: put the new key first, run this, then "
        "drop the old key)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, **options):
        for what, done, total in services.stored_secrets_reencrypt(
            batch_size=options["batch_size"]
        ):
            self.stdout.write(f"{what}: {done}/{total}")
        self.stdout.write(self.style.SUCCESS("Every stored secret is under the first key."))
