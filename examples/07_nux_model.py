"""Seed sample 7 (Async API, Async/Await 방식): the serving framework's ``NuxModel``.

The seed's code with its import changed and one model-building line added: the seed loads
"mnist.onnx", which is written here from the built-in MNIST model (see docs/seed-examples.md).
Run it with ``python examples/07_nux_model.py``; nothing needs to be started by hand.
"""
import asyncio
import numpy as np

import onnx  # npusim: to write the seed's model file
from npusim.server.model import NuxModel, NuxModelConfig
from npusim.services.zoo import mnist

onnx.save(mnist(), "mnist.onnx")  # npusim: the seed's model file

class SimpleApplication:
    def __init__(self):
        self.model = NuxModel(
            NuxModelConfig(
                name="MNIST",
                model="mnist.onnx",
            )
        )

    async def load(self):
        await self.model.load()

    async def process(self, image):
        input = self.preprocess(image)
        tensor = await self.model.predict(input)
        output = self.postprocess(tensor)
        return output

    def preprocess(self, image):
        # do preprocess
        return image

    def postprocess(self, tensor):
        # do postprocess
        return tensor


APP = SimpleApplication()

async def startup():
    await APP.load()

async def run(image):
    result = await APP.process(image)
    return result

if __name__ == "__main__":
    asyncio.run(startup())

    image = np.random.rand(1, 1, 28, 28).astype(np.float32)
    asyncio.run(run(image))

    # npusim: added to show the result (one more request, in a third event loop)
    print("model:", APP.model.name, "ready:", APP.model.ready)
    print("result:", asyncio.run(run(image)))
