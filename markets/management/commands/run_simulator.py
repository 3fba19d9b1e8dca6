import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the exchange simulator (CoinGecko v3 subset) on $SIMULATOR_PORT."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.SIMULATOR_PORT)

    def handle(self, *args, **options):
        self.stdout.write(f"Simulator listening on http://{options['host']}:{options['port']}")
        uvicorn.run(
            "markets.simulator.app:app",
            host=options["host"],
            port=options["port"],
            log_level="warning",
        )
