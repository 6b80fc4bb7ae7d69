"""What the server says about itself, the same over REST and gRPC."""

SERVER_NAME = "npusim"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
