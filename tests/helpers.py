"""Helpers shared by test files: running infer.py alone, and recognising a one-line error."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(result):
    """A finished subprocess stopped with exit 2 and exactly one stderr line, 'error: ...', no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") \
        and "Traceback" not in result.stderr


def run_alone(tmp_path, *args, env=None, python=sys.executable):
    """infer.py copied into an empty folder and run there, with nothing of the project importable."""
    kernel = tmp_path / "kernel"
    kernel.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "infer.py"), kernel / "infer.py")
    env = dict(os.environ, PYTHONPATH="", **(env or {}))
    return subprocess.run([python, "infer.py", *args], cwd=kernel, capture_output=True, text=True, env=env)
