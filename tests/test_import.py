import subprocess
import sys


def test_import_pulls_in_no_framework():
    code = ("import sys, ortdecode; heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx', "
            "'tensorflow', 'jax', 'ray') if m in sys.modules); print(','.join(heavy))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == ""
