"""Choosing the execution provider: `auto` falls back to CPU with one line on stderr saying why; `cuda`
fails with that reason; stdout stays the caller's (JSON output parses).

Which test runs depends on the onnxruntime installed: the CPU build (CI), or onnxruntime-gpu on a
machine where CUDA cannot start (checked by hand: see the issue note). On a working GPU, test_cuda.py
covers `auto` choosing CUDA."""

import json
import subprocess
import sys

import onnxruntime as ort
import pytest

import ortdecode
from ortdecode.errors import ProviderError
from ortdecode.runner import cuda_available, cuda_library_problem

HAS_CUDA_PROVIDER = cuda_available()
CUDA_LIBRARY_PROBLEM = cuda_library_problem() if HAS_CUDA_PROVIDER else None


def generate_json(provider, *flags):
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "generate", "--provider", provider, "--json", *flags,
                          "spell out: 42"], capture_output=True, text=True, timeout=600)
    return run, (json.loads(run.stdout) if run.returncode == 0 else None)


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="onnxruntime-gpu is installed")
def test_cpu_build_auto_says_why_only_with_verbose_and_cuda_fails_naming_the_fix():
    run, output = generate_json("auto")
    assert run.returncode == 0 and output["provider"] == "cpu" and output["results"][0]["outputs"] == ["forty-two"]
    assert run.stderr == ""  # a CPU-only install asked for nothing else
    run, _ = generate_json("auto", "-v")
    assert run.stderr.splitlines()[0] == \
        "ortdecode: CUDA is not available in this onnxruntime build; using the CPU provider"
    with pytest.raises(ProviderError, match='has no CUDA execution provider .* pip install "ortdecode\\[gpu\\]" '
                                            '\\(from a checkout: pip install -e ".\\[gpu\\]"\\)'):
        ortdecode.load(provider="cuda")


@pytest.mark.skipif(CUDA_LIBRARY_PROBLEM is None, reason="needs onnxruntime-gpu on a machine without CUDA libraries")
def test_gpu_build_without_cuda_libraries_falls_back_with_the_loader_error():
    run, output = generate_json("auto")
    assert run.returncode == 0 and output["provider"] == "cpu"  # stdout is clean JSON
    assert run.stderr.strip().splitlines()[-1] == \
        f"ortdecode: the CUDA execution provider cannot start ({CUDA_LIBRARY_PROBLEM}); using the CPU provider"
    assert "cannot open shared object file" in CUDA_LIBRARY_PROBLEM
    with pytest.raises(ProviderError, match="the CUDA execution provider cannot start: .*cannot open shared object"):
        ortdecode.load(provider="cuda")
    assert ort.get_available_providers()[-1] == "CPUExecutionProvider"
