"""Seed sample 6 (Async API, Queue 방식): ``session.create_async`` with a submitter and a queue.

The seed's code with its import changed and one model-building line added: the seed opens
"mnist.onnx", which is written here from the built-in MNIST model (see docs/seed-examples.md).
Run it with ``python examples/06_async_queue.py``; nothing needs to be started by hand.
"""
import numpy as np
import random

import onnx  # npusim: to write the seed's model file
from npusim.runtime import session
from npusim.services.zoo import mnist

onnx.save(mnist(), "mnist.onnx")  # npusim: the seed's model file

submitter, queue = session.create_async("mnist.onnx",
                                        worker_num=2,
                                        # Determine how many asynchronous requests you can submit
                                        # without blocking.
                                        input_queue_size=100,
                                        output_queue_size=100)

for i in range(0, 5):
    idx = random.randint(0, 59999)
    input = np.random.rand(1, 1, 28, 28).astype(np.float32)
    submitter.submit(input, context=idx) # non blocking call

for i in range(0, 5):
    context, outputs = queue.recv(100) # 100 ms for timeout. If None, queue.recv() will be blocking.
    print(outputs[0].numpy())

if queue:
    queue.close()
if submitter:
    submitter.close()
