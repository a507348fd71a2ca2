# The ae-worker service, on CPU-only torch (PyPI's torch is the CUDA build: ~5 GB more).
#   docker build -t ae-worker .                                            CPU wheels
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple -t ae-worker:cuda .   PyPI's CUDA build
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies in a layer of their own, before the code: a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --index-url "$TORCH_INDEX" "$(grep '^torch' /tmp/requirements.txt)" \
    && pip install -r /tmp/requirements.txt

COPY ae_core ./ae_core
COPY worker ./worker
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 ae && mkdir -p /var/lib/ae-worker && chown ae /var/lib/ae-worker
USER ae

# Prometheus metrics, /healthz and /readyz
EXPOSE 9108
ENV AE_SERVICE__METRICS_HOST=0.0.0.0 AE_SERVICE__STATE_DIR=/var/lib/ae-worker
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"
ENTRYPOINT ["ae-worker"]
CMD ["run"]
