"""The SDK's ``furiosa.runtime.profiler``: a profiling context that writes a Chrome/Perfetto trace."""

from npusim.client._profiler import profile

__all__ = ["profile"]
