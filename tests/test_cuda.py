"""The CUDA path: KV cache on the device, beam reordering on the device, parity with PyTorch.

Marked `cuda`; skipped unless onnxruntime-gpu is installed and a GPU answers."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import ortdecode
from ortdecode_export import export_model
from ortdecode_export.validate import pytorch_reference, stepwise_logits

from . import ort_spy
from .conftest import TEXTS


def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        return ortdecode.default_model_path() is not None and \
            ortdecode.load(provider="cuda").provider == "cuda"
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU here
        return False


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not _cuda_works(), reason="needs onnxruntime-gpu and a GPU")]


@pytest.fixture(scope="module")
def cuda_generator(tiny_v1):
    return ortdecode.load(tiny_v1.export, provider="cuda")


def test_auto_picks_cuda(tiny_v1):
    assert ortdecode.load(tiny_v1.export).provider == "cuda"


def test_kv_cache_and_encoder_output_stay_on_the_device(cuda_generator):
    ids, mask = cuda_generator.tokenizer.encode(TEXTS[:4])
    state = cuda_generator.runner.encode(ids, mask)
    encoder_hidden = state.encoder_hidden
    logits = cuda_generator.runner.step(state, np.zeros(4, np.int64))
    cuda_generator.runner.step(state, np.full(4, 5, np.int64))
    assert isinstance(logits, np.ndarray) and logits.shape == (4, cuda_generator.manifest.vocab_size)
    values = [encoder_hidden, state.encoder_mask] + state.self_cache + state.cross_cache
    assert {v.device_name().lower() for v in values} == {"cuda"}


def test_beam_reorder_runs_on_the_device(cuda_generator):
    ids, mask = cuda_generator.tokenizer.encode(TEXTS[:4])
    state = cuda_generator.runner.encode(ids, mask)
    cuda_generator.runner.step(state, np.zeros(4, np.int64))
    before = [v.numpy() for v in state.self_cache]  # copies to the host, for the check only
    rows = np.array([3, 0, 0, 2])
    cuda_generator.runner.select(state, rows)
    assert {v.device_name().lower() for v in state.self_cache} == {"cuda"}
    for old, new in zip(before, state.self_cache):
        np.testing.assert_array_equal(new.numpy(), old[rows])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_kv_cache_goes_from_step_to_step_on_the_device(cuda_generator, monkeypatch, num_beams):
    """As on the CPU (tests/test_runner.py): each past KV input is the buffer the previous step (or the
    reorder graph) produced, at the same device address; only the logits are copied to the host."""
    spy = ort_spy.install(monkeypatch)
    cuda_generator.generate(TEXTS[:4], max_new_tokens=6, min_new_tokens=6, num_beams=num_beams)
    counts = ort_spy.follow_the_cache(spy, cuda_generator.manifest)
    m = cuda_generator.manifest
    assert all(len(shape) == 3 and shape[1:] == (1, m.vocab_size) for shape in spy.host_copies), spy.host_copies
    assert (counts.get(m.graphs["cache_reorder"].file, 0) >= 5) == (num_beams > 1), counts


def test_step_logits_match_pytorch_on_cuda(tiny):
    generator = ortdecode.load(tiny.export, provider="cuda")
    tokenizer = tiny.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    decoder_input_ids, expected = pytorch_reference(tiny.torch_model(), ids, mask, steps=12)
    assert np.abs(stepwise_logits(generator.runner, ids, mask, decoder_input_ids) - expected).max() <= 1e-4


@pytest.mark.parametrize("options", [dict(max_new_tokens=16), dict(max_new_tokens=16, num_beams=4),
                                     dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, length_penalty=0.6)])
def test_sequences_match_transformers_on_cuda(tiny, options):
    generator = ortdecode.load(tiny.export, provider="cuda")
    model, tokenizer = tiny.torch_model(), tiny.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**encoded, **options)
    np.testing.assert_array_equal(generator.generate(TEXTS, **options).sequences, expected.numpy())


@pytest.mark.parametrize("fp16, atol", [(False, 1e-3), (True, 5e-2)])
def test_cuda_fused_export_validates_and_decodes(tiny_v1, tmp_path, fp16, atol):
    manifest = export_model(str(tiny_v1.checkpoint), tmp_path / "cuda", target="cuda", fp16=fp16, atol=atol,
                            progress=False)
    assert manifest.target == "cuda" and manifest.dtype == ("float16" if fp16 else "float32")
    assert manifest.validation["passed"] is True
    generator = ortdecode.load(tmp_path / "cuda", provider="cuda")
    cpu = ortdecode.load(tiny_v1.export, provider="cpu")
    first_step = [g.generate(TEXTS, max_new_tokens=1, return_logits=True).logits[0] for g in (generator, cpu)]
    assert np.abs(first_step[0] - first_step[1]).max() <= atol
    if not fp16:  # float32 on the GPU decodes exactly as on the CPU
        options = dict(max_new_tokens=8, num_beams=2)
        np.testing.assert_array_equal(generator.generate(TEXTS, **options).sequences,
                                      cpu.generate(TEXTS, **options).sequences)


def test_default_model_on_cuda_gives_the_cpu_text():
    prompts = ["spell out: 4521", "to digits: seventy thousand three"]
    assert ortdecode.load(provider="cuda").generate(prompts).texts == ortdecode.load(provider="cpu").generate(prompts).texts
