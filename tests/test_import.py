import os
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


def test_greedy_and_beam_on_verified_files_load_no_random_module_and_no_libcrypto(default_model_dir, tmp_path):
    """numpy.random and hashlib each bring OpenSSL's libcrypto into the process (5.5 MiB RSS in all, measured;
    the int8 peak-RSS target is within a few MiB): only sampling and a file's first check need them. The
    first process checks the files (and hashes them); the second finds them in the record of verified files."""
    code = ("import sys, ortdecode\n"
            f"generator = ortdecode.load({str(default_model_dir)!r})\n"
            "generator.generate(['spell out: 7'])\n"
            "generator.generate(['spell out: 8'], num_beams=2)\n"
            "print(sorted(m for m in ('numpy.random', 'hashlib', '_hashlib') if m in sys.modules))\n"
            "generator.generate(['spell out: 9'], do_sample=True, seed=1)\n"
            "print('numpy.random' in sys.modules)\n")
    env = {**os.environ, "ORTDECODE_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert first.stdout.splitlines()[0] == "['_hashlib', 'hashlib']", first.stdout  # hashed: nothing recorded yet
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert second.stdout.splitlines() == ["[]", "True"], second.stdout + second.stderr
