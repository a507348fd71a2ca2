# The ae-worker service. Torch from PyPI is the CUDA build; it runs on the CPU as well.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ae_core ./ae_core
COPY worker ./worker
RUN pip install . && useradd --create-home --uid 10001 ae && mkdir -p /var/lib/ae-worker && chown ae /var/lib/ae-worker
USER ae

# Prometheus metrics, /healthz and /readyz
EXPOSE 9108
ENV AE_SERVICE__METRICS_HOST=0.0.0.0 AE_SERVICE__STATE_DIR=/var/lib/ae-worker
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"
ENTRYPOINT ["ae-worker"]
CMD ["run"]
