"""SQNR: the clipping range with the best signal-to-quantisation-noise ratio, clipping weighted.

``SQNR(range) = E[x²] / E[noise]`` with ``noise = rounding + γ·clipping`` and ``γ = 3``, the
default of AIMET's SQNR encoding analyser: a clipped value is wrong in a way the next layers
cannot average out (it saturates, biased, and outliers tend to carry signal), while rounding
noise is zero-mean and decorrelated, so clipping error counts three times. The signal power is
fixed for a tensor, so maximising SQNR is minimising ``rounding + 3·clipping`` — same noise
model, quantisers and search grid as MSE (:mod:`npusim.compiler_svc.calibrate.noise`), a different
optimum: with clipping dearer the chosen range is never narrower than MSE's on the same grid,
and strictly wider on heavy-tailed data, where MSE trades outliers for resolution.

* ``SQNR_ASYM``: 256 levels over ``[-zΔ, (255 - z)Δ]``, every integer zero point ``z`` tried;
* ``SQNR_SYM``: levels ``kΔ``, ``|k| <= 127``, over ``[-127Δ, 127Δ]``.
"""

from __future__ import annotations

from npusim.compiler_svc.calibrate.mse import MSEObserver

GAMMA = 3.0


class SQNRObserver(MSEObserver):
    __slots__ = ()
    gamma = GAMMA
