import logging

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the exchange simulator (CoinGecko v3 subset) on $SIMULATOR_PORT."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.SIMULATOR_PORT)

    def handle(self, *args, **options):
        logger.info(
            "simulator listening",
            extra={"url": f"http://{options['host']}:{options['port']}"},
        )
        # log_config=None: uvicorn keeps the settings' LOGGING (JSON lines) instead of
        # installing its plain-text handlers.
        uvicorn.run(
            "markets.simulator.app:app",
            host=options["host"],
            port=options["port"],
            log_level="warning",
            log_config=None,
        )
