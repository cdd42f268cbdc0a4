# RSPO pipeline. `make test` runs the test suite.
CARGO ?= cargo

.PHONY: build test
build:
	$(CARGO) build --release --workspace

test:
	$(CARGO) test --workspace
