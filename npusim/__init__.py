"""npusim: an emulated Warboy-class NPU inference stack.

The packages live under this namespace — ``npusim.services`` (the shared ground),
``npusim.compiler_svc``, ``npusim.npu_daemon`` and ``npusim.client`` — and beside them, modules
shaped like the vendor SDK's, so code written for the SDK runs with ``furiosa`` replaced by
``npusim`` in its import lines:

    from npusim.optimizer import optimize_model
    from npusim.quantizer import quantize, Calibrator, CalibrationMethod
    from npusim.runtime import session            # session.create, session.create_async
    from npusim.runtime.profiler import profile
    from npusim.server.model import NuxModel, NuxModelConfig
"""

from npusim.services import __version__

__all__ = ["__version__"]
