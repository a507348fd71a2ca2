# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install when the dependencies change or the environment serves another checkout (editable install).
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(CURDIR)) | sha256sum | cut -c1-12)

.PHONY: demo test bench kafka-up kafka-down kafka-start kafka-stop lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ae-worker replay --output ae-output/anomalies.jsonl

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/quality.py

kafka-up:
	scripts/kafka/broker.sh up

kafka-down:
	scripts/kafka/broker.sh down

kafka-stop:   # keeps the topics and offsets for kafka-start
	scripts/kafka/broker.sh stop

kafka-start:
	scripts/kafka/broker.sh start

lint: $(STAMP)
	$(BIN)/ruff check ae_core worker tests bench scripts
	$(BIN)/mypy

clean:
	rm -rf ae-output .pytest_cache
