# The two commands a new user needs: `make run` and `make test`.
# Everything they need (ONNX Runtime, the Python test environment) is fetched
# by the scripts they call; nothing has to be installed by hand first.

HTTP_ADDR ?= 127.0.0.1:8000
MODELS ?= models

.PHONY: run test ort venv build models check-models

## Fetch ONNX Runtime if missing, build, and serve the demo models on $(HTTP_ADDR).
run: ort
	cargo run --release -p sluice-cli -- serve --models $(MODELS) --http-addr $(HTTP_ADDR)

## The whole test suite: formatting, lints, Rust tests, tritonclient tests.
test:
	scripts/test.sh

## Fetch the ONNX Runtime library into .sluice/ort/ (from the onnxruntime wheel).
ort:
	scripts/fetch-ort.sh

## Create .venv with the pinned Python tools (onnx, tritonclient, pytest).
venv:
	scripts/setup-venv.sh

build: ort
	cargo build --release

## Regenerate the demo and fixture models, then check them with onnxruntime.
models: venv
	.venv/bin/python models/generate.py
	.venv/bin/python models/generate.py check
