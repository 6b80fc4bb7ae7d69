"""Generated gRPC modules of the Open Inference Protocol (see inference.proto, regenerate.sh)."""
