import subprocess
import sys


def test_import_pulls_in_no_framework():
    code = ("import sys, ortdecode; heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx', "
            "'tensorflow', 'jax', 'ray') if m in sys.modules); print(','.join(heavy))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == ""


def test_ray_data_without_ray_names_the_extra(default_model_dir):
    """With Ray absent (an import hook refuses it), Generate without `threads` says which extra to install;
    with `threads` it loads and generates, Ray not needed."""
    code = ("import sys\n"
            "class NoRay:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'): raise ImportError('No module named ray')\n"
            "sys.meta_path.insert(0, NoRay())\n"
            "from ortdecode.ray_data import Generate\n"
            f"print(len(Generate({str(default_model_dir)!r}, threads=1)({{'text': ['spell out: 7']}})['outputs']))\n"
            "try:\n"
            f"    Generate({str(default_model_dir)!r})\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "1" and 'pip install "ortdecode[ray]"' in lines[1], run.stdout + run.stderr
