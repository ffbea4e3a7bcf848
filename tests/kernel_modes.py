"""How the Triton kernel test modules run their CPU cases.

CPU cases run the kernels in Triton's interpreter, which triton fixes when it is first
imported. Importing this module before anything imports triton turns the interpreter on
when there is no CUDA. Otherwise (a GPU machine, or triton already imported in compiled
mode) the CPU cases skip in this process, and each module's subprocess test re-runs its file
in a child pytest with ``TRITON_INTERPRET=1``. GPU cases (``@pytest.mark.gpu``) run natively.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import negrec_fast

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_EXPECT = "NEGREC_EXPECT_TRITON_INTERPRETER"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def interpreter_cases(interpreted: bool) -> pytest.MarkDecorator:
    """The skip marker of a module's CPU kernel cases (``interpreted``: whether its kernels were
    built for the interpreter). A child run that should interpret but does not fails here."""
    if os.environ.get(_EXPECT) == "1" and not interpreted:
        raise RuntimeError(f"{_EXPECT}=1 but triton is not interpreting (TRITON_INTERPRET not seen)")
    return pytest.mark.skipif(not interpreted, reason="CPU kernel cases run in the TRITON_INTERPRET=1 subprocess")


def run_in_interpreter(test_file: str, min_passed: int) -> None:
    """Runs ``test_file``'s CPU cases in a child pytest under ``TRITON_INTERPRET=1``; asserts that
    it succeeds with at least ``min_passed`` tests passed."""
    pkg_root = str(Path(negrec_fast.__file__).resolve().parents[1])
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", **{_EXPECT: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", test_file, "-q", "-m", "not gpu", "-p", "no:cacheprovider",
         "-W", "ignore::RuntimeWarning"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= min_passed, report
