"""The SDK's ``furiosa.optimizer``: the graph optimiser that prepares a model for calibration."""

from npusim.compiler_svc import optimize_model

__all__ = ["optimize_model"]
