"""ae-worker: the streaming anomaly-detection service around :mod:`ae_core`."""
