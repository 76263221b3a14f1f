"""Python started in the checkout's root, as a new user starts it (`python -m electra_fast`, `python -c`, a
notebook): the root is first on sys.path, and no top-level folder may shadow an installed package. transformers
imports Hugging Face's `kernels` to build any model, and our top-level `kernels/` (shipped as
`electra_fast.kernels`) must step aside for it. Each test runs a fresh interpreter there, without the test
suite's own sys.path."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m pytest` puts the root on sys.path; the children must find it only as a user's Python does.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(*args, timeout=300, python_flags=()):
    return subprocess.run([sys.executable, *python_flags, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_no_top_level_folder_is_a_regular_package_but_the_two_we_ship():
    # A folder without __init__.py is at most a namespace portion: an installed package of that name wins over it.
    packages = sorted(name for name in os.listdir(ROOT)
                      if os.path.isfile(os.path.join(ROOT, name, "__init__.py")))
    assert packages == ["electra_fast", "kernels"]


def test_a_hugging_face_masked_lm_builds_from_the_root():
    pytest.importorskip("transformers")
    pytest.importorskip("kernels", reason="transformers >= 5.25 installs Hugging Face's kernels")
    done = _run("-c", "import transformers as tf; import kernels; "
                      "tf.BertForMaskedLM(tf.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, "
                      "intermediate_size=64)); print(kernels.__file__)")
    assert done.returncode == 0, done.stderr
    assert not os.path.realpath(done.stdout.strip()).startswith(os.path.join(ROOT, ""))


def test_import_kernels_from_the_root_fails_where_no_other_is_installed():
    # -S: no site-packages, so the standard library and the root are all there is.
    done = _run("-c", "import kernels", python_flags=("-S",))
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in done.stderr


def test_two_checkouts_on_the_path_do_not_find_each_other(tmp_path):
    # A second clone (or worktree) whose root is on PYTHONPATH: each kernels/ must step aside for the other too.
    for part in ("setup.py", "electra_fast/__init__.py", "kernels/__init__.py"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(ROOT, part)) as source:
            (tmp_path / part).write_text(source.read())
    done = subprocess.run([sys.executable, "-S", "-c", "import kernels"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**ENV, "PYTHONPATH": ROOT})
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'kernels'" in done.stderr, done.stderr[-500:]


def test_electra_fast_kernels_import_from_the_root():
    pytest.importorskip("triton")
    done = _run("-c", "import electra_fast.kernels.generator_loss_and_sample as g, electra_fast._C; print(g.__name__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "electra_fast.kernels.generator_loss_and_sample"


def test_python_m_electra_fast_help_from_the_root():
    done = _run("-m", "electra_fast", "--help")
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout


def test_python_m_electra_fast_pretrains_a_hugging_face_bert_from_the_root(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    done = _run("-m", "electra_fast", "pretrain", "--discriminator", "bert", "--num-layers", "1", "--hidden-size",
                "64", "--num-heads", "2", "--intermediate-size", "128", "--seq-len", "32", "--batch-size", "2",
                "--steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 3:" in done.stdout + done.stderr
    assert (out / "discriminator" / "config.json").is_file()
