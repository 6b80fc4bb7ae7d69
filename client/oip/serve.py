"""The body of ``npusim serve``: furiosa-server's command line, on npusim sessions."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from npusim.client.oip.app import create_app
from npusim.client.oip.repository import ModelConfig, Repository, load_model_config
from npusim.services import tracing
from npusim.services.errors import ConfigError

__all__ = ["run"]


def run(*, model_path: str | None, model_name: str | None, model_version: str | None, model_config: Path | None,
        host: str, http_port: int, grpc_port: int, npu_device: str | None, worker_num: int | None, batch_size: int | None,
        log_level: str) -> None:
    import uvicorn

    if (model_path is None) == (model_config is None):
        raise ConfigError("serve one model with --model-path (and --model-name), or several with --model-config "
                          "models.yaml")
    if model_config is not None:
        configs = load_model_config(model_config)
    else:
        assert model_path is not None
        name = model_name or Path(model_path.removeprefix("zoo:")).stem
        configs = [ModelConfig(name, model_path, model_version, npu_device, batch_size, worker_num)]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--host {host!r} is not an IP address (127.0.0.1 serves this machine only, 0.0.0.0 "
                          "every interface)") from None
    tracing.setup_tracing("serve", instance="serve")  # OTEL_* as every npusim process reads it
    app = create_app(Repository(configs), grpc_address=(host, grpc_port))
    uvicorn.run(app, host=host, port=http_port, log_level=log_level, access_log=False)
