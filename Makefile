# RSPO pipeline. `make test` runs the test suite.
CARGO ?= cargo

.PHONY: build test bench
build:
	$(CARGO) build --release --workspace --bins

# The end-to-end tests run the real binaries, so they are built first.
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

bench:
	$(CARGO) bench -p rspo
