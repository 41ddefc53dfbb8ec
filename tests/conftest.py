import os
import tempfile

import pytest
import torch

# keep the user's cache and results database out of the tests
os.environ.setdefault("METALENS_RESULTS", os.path.join(tempfile.mkdtemp(prefix="metalens-test-"), "results.sqlite"))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from metalens.testing import tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    return tiny_llama()


@pytest.fixture(scope="session")
def real():
    """The real default model (SmolLM2-135M-Instruct); converted from the GGUF on first use."""
    from metalens import load_subject

    return load_subject(device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a local Hugging Face model directory."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    return d
