"""The replay path: recordings in, the detector over them, results and their evaluation out (no Kafka)."""
