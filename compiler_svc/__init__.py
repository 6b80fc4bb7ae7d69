"""The compiler service: ONNX → optimise → calibrate → int8 quantise → partition → cost.

Usable in-process (:func:`compiler_svc.pipeline.compile_model`) and as a ZeroMQ service
(``npusim compiler``) with a content-addressed program cache.
"""
