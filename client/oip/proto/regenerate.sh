#!/usr/bin/env bash
# Regenerate inference_pb2*.py from inference.proto. grpcio-tools 1.75 emits code for protobuf
# 6.31+ (newer ones emit code that needs protobuf 7, which the OpenTelemetry packages do not take
# yet), so it is installed apart, not into the project's environment.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$(mktemp -d)"
tree="$(mktemp -d)"
trap 'rm -rf "$tools" "$tree"' EXIT
python3 -m pip install -q --target "$tools" grpcio-tools==1.75.1
mkdir -p "$tree/npusim/client/oip/proto"
cp "$here/inference.proto" "$tree/npusim/client/oip/proto/"
(cd "$tree" && PYTHONPATH="$tools" python3 -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
    npusim/client/oip/proto/inference.proto)
cp "$tree"/npusim/client/oip/proto/inference_pb2*.py "$here/"
