# One image for every Django process (web, worker, beat, simulator).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 1000 app
COPY requirements.txt .
# The runtime lock only (no dev tools, honcho included), every file checked against its hash.
RUN pip install --no-cache-dir --require-hashes -r requirements.txt
COPY --chown=app:app . .
USER app
# Hashed, brotli/gzip-compressed static files, served by the app itself (WhiteNoise).
# Collecting reads no secret: development settings for this one build step only.
RUN DEBUG=true python manage.py collectstatic --noinput -v0

EXPOSE 8000 8765
# No access log (its lines carry query strings, /ws/user?token= included) and no
# forwarded headers believed unless FORWARDED_ALLOW_IPS names the proxies.
CMD ["sh", "-c", "exec python -m uvicorn cryptovault.asgi:application --host 0.0.0.0 --port 8000 --no-access-log --proxy-headers --forwarded-allow-ips \"${FORWARDED_ALLOW_IPS:-127.0.0.1}\""]
