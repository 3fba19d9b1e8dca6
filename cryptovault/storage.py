"""Static files storage: WhiteNoise's hashed, compressed storage, hashed in every mode."""

from django.conf import settings
from django.contrib.staticfiles.storage import StaticFilesStorage as PlainStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Django links plain names under DEBUG; ``make run`` runs DEBUG on collected files,
    and those deserve the production URLs (hashed, cached for a year, immutable) too.
    Where WhiteNoise reads the finders (DEBUG) and ``collectstatic`` never ran (tests, a
    fresh checkout), names stay plain; elsewhere a missing manifest fails loudly."""

    def url(self, name, force=False):
        if self.hashed_files or not settings.WHITENOISE_USE_FINDERS:
            return super().url(name, force=True)
        return PlainStorage.url(self, name)
