"""The KServe Python SDK's v2 REST client against Sluice, unchanged: health,
model readiness, and inference in JSON and binary mode."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 2.5, 5.0, 1.9]], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


async def _with_client(fn):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        return await fn(client)
    finally:
        await client.close()


def test_health_and_model_readiness(server):
    async def check(c):
        assert await c.is_server_live(server.url) is True
        assert await c.is_server_ready(server.url) is True
        assert await c.is_model_ready(server.url, "iris") is True
        assert await c.is_model_ready(server.url, "no_such_model") is False

    run(_with_client(check))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_iris(server, binary):
    async def check(c):
        inp = InferInput(name="input", shape=list(IRIS_ROWS.shape), datatype="FP32")
        inp.set_data_from_numpy(IRIS_ROWS, binary_data=binary)
        request = InferRequest(model_name="iris", infer_inputs=[inp], request_id="kserve-1")
        response = await c.infer(server.url, request, model_name="iris")
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        # Version 2 (the default) labels the second row versicolor (1);
        # version 1 would say virginica (2): see models/README.md.
        assert outputs["label"].tolist() == [0, 1]
        assert outputs["probabilities"].shape == (2, 3)
        np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), [1.0, 1.0], rtol=1e-5)
        assert response.id == "kserve-1"

    run(_with_client(check))


def test_unknown_model_is_an_error(server):
    async def check(c):
        inp = InferInput(name="input", shape=[1, 4], datatype="FP32")
        inp.set_data_from_numpy(IRIS_ROWS[:1], binary_data=False)
        request = InferRequest(model_name="no_such_model", infer_inputs=[inp])
        with pytest.raises(Exception) as err:
            await c.infer(server.url, request, model_name="no_such_model")
        assert "no_such_model" in str(err.value)

    run(_with_client(check))
