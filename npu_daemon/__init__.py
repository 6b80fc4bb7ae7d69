"""The emulated NPU device: one daemon process per device, PEs pe0, pe1 and fused pe0-1.

It admits sessions (exclusive PEs, like the device files), queues their jobs per PE, holds
each PE busy for the time the program's cost model gives, and returns real int8 outputs
computed with onnxruntime (or zero-filled ones in timing-only mode).
"""
