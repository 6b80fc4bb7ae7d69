"""``compiler_config``: the options a user can pass to the compiler, checked once.

Keys with an effect: ``permute_input`` (one torch.permute-style order per input; the
program then takes that layout), ``remove_lower`` / ``remove_unlower`` (leave the NPU's
layout at the program boundary: the caller supplies or receives the int8 device tensor).
Other keys the SDK documents are accepted with their types and have no effect in the
emulator (they tune the real compiler's search). Anything else is an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npusim.services.errors import InvalidCompilerConfig

__all__ = ["CompilerConfig", "EFFECTIVE", "ACCEPTED"]

EFFECTIVE: dict[str, type] = {"permute_input": list, "remove_lower": bool, "remove_unlower": bool}
ACCEPTED: dict[str, type] = {
    "allow_precision_error": bool, "lower_tabulated_dequantize": bool, "use_program_loading": bool,
    "keep_unsignedness": bool, "split_unit": int, "sa_malloc": bool,
}


@dataclass(frozen=True)
class CompilerConfig:
    permute_input: list[list[int]] = field(default_factory=list)
    remove_lower: bool = False
    remove_unlower: bool = False

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, *, inputs: list[tuple[str, int]] | None = None) -> CompilerConfig:
        """Validate ``raw``; ``inputs`` (name, rank) lets ``permute_input`` be checked too."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidCompilerConfig(f"compiler_config must be a mapping of option name to value, got "
                                        f"{type(raw).__name__}")
        for key, value in raw.items():
            want = EFFECTIVE.get(key) or ACCEPTED.get(key)
            if want is None:
                known = ", ".join(sorted(EFFECTIVE) + sorted(ACCEPTED))
                raise InvalidCompilerConfig(f"unknown compiler_config key {key!r}; known keys: {known}",
                                            details={"key": key})
            if type(value) is not want:  # bool is an int: exact types only, as the SDK checks
                raise InvalidCompilerConfig(f"compiler_config[{key!r}] must be {want.__name__}, got "
                                            f"{type(value).__name__} {value!r}", details={"key": key})
        perms = raw.get("permute_input", [])
        for p in perms:
            if not isinstance(p, list) or not all(type(a) is int for a in p) or sorted(p) != list(range(len(p))):
                raise InvalidCompilerConfig(f"compiler_config['permute_input']: {p!r} is not a permutation "
                                            "like [0, 3, 1, 2]", details={"key": "permute_input"})
        if inputs is not None and perms:
            if len(perms) != len(inputs):
                raise InvalidCompilerConfig(f"compiler_config['permute_input'] has {len(perms)} orders but the "
                                            f"model has {len(inputs)} inputs", details={"key": "permute_input"})
            for p, (name, rank) in zip(perms, inputs):
                if len(p) != rank:
                    raise InvalidCompilerConfig(f"compiler_config['permute_input']: {p} does not fit input "
                                                f"{name!r} of rank {rank}", details={"key": "permute_input"})
        return cls(permute_input=[list(p) for p in perms], remove_lower=raw.get("remove_lower", False),
                   remove_unlower=raw.get("remove_unlower", False))
