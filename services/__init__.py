"""Shared ground of npusim: wire protocol, data types, sockets, tracing, config and the CLI.

Nothing here imports ``compiler_svc``, ``npu_daemon`` or ``client``; they all import this.
"""

__version__ = "0.1.0"
