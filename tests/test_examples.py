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


def test_the_finetune_example_pretrains_with_the_python_api_then_fine_tunes_each_task(tmp_path):
    # --quick: a few pretraining steps and one short fine-tuning run per task; the full example takes minutes.
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "finetune_tasks.py"), "--quick"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^pretrained 4 steps: loss [\d.]+, validation loss \S+; \S+discriminator$", run.stdout, re.M)
    lines = [line.split() for line in run.stdout.splitlines()]
    tasks = [(words[0], words[1]) for words in lines
             if words and words[0] in ("classification", "token-classification", "question-answering")]
    assert tasks == [(task, kind) for task in ("classification", "token-classification", "question-answering")
                     for kind in ("pretrained", "from")]
