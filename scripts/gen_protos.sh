#!/usr/bin/env bash
# Regenerates the Python code of the llmmeter.v1 contract into the client package.
# The output is checked in; CI runs this and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=clients/python/src
rm -f "$OUT"/llmmeter/v1/*_pb2*.py "$OUT"/llmmeter/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -I protos \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  --python_out="$OUT" --mypy_out="$OUT" \
  --grpc_python_out="$OUT" --mypy_grpc_out="$OUT" \
  protos/llmmeter/v1/*.proto
touch "$OUT/llmmeter/v1/__init__.py"
