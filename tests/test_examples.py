"""The examples run as a user runs them, with the installed package."""
import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_the_trainer_example_trains_the_patched_model_and_its_eval_loss_falls(tmp_path):
    # From another folder, so that the source checkout is not what `import electra_fast` finds.
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "hf_trainer_mlm.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    before, after = map(float, re.search(r"eval loss ([\d.]+) -> ([\d.]+)", run.stdout).groups())
    assert after < before
