"""The Kafka service: consuming, parsing, scoring per partition, publishing, committing, partition state."""
