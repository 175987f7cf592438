import os

import pytest
import torch
from hypothesis import settings

# CI runs the property tests with a fixed seed (a red CI must be reproducible); locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits():
    import edgequant as eq

    return eq.data.digits()


@pytest.fixture(scope="session")
def digits_test_x(digits):
    return torch.cat([x for x, _ in digits[1]])


@pytest.fixture(scope="session")
def digits_model():
    import edgequant as eq

    return eq.models.digits_cnn(pretrained=True)
