"""Seed sample 5 (Async API): the blocking session, ``session.create(model)`` + ``sess.run(input)``.

The seed's snippet with its import changed and its two placeholders (``model``, ``input = ...``)
filled with a built-in model and a random image (see docs/seed-examples.md). Run it with
``python examples/05_sync_session.py``; nothing needs to be started by hand.
"""
import numpy as np  # npusim: for the input placeholder

from npusim.runtime import session
from npusim.services.zoo import mnist

model = mnist()  # npusim: the seed's `model` placeholder

with session.create(model) as sess:
    input = np.random.rand(1, 1, 28, 28).astype(np.float32)  # npusim: the seed's `input = ...`
    outputs = sess.run(input) # Wait for completion
    # npusim: added to show the result
    print("device:", sess.device)
    print(sess.summary())
    print("outputs[0]:", outputs[0].numpy())
