"""``npusim serve``: the vendor's model server (furiosa-server) on emulated NPUs, speaking the
KServe Open Inference Protocol v2 over REST, so code and clients written against it (Triton's
``tritonclient`` included) move to real hardware unchanged. Each served model is one npusim
session, with its worker pool, on its device."""
