"""Model plumbing shared by the apps."""

from django.db import models


class TimestampedModel(models.Model):
    """A row that records when it was created and when last saved through the ORM."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
