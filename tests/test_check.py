"""`electra-fast check` catches what it exists to catch, from a truth that never runs through the ops, and a
kernel that cannot launch is a FAIL row with its reason, not a crash."""
import pytest
import torch

import electra_fast
from electra_fast import check

CPU = torch.device("cpu")


def test_check_passes_on_the_cpu(capsys):
    assert check.main("cpu") == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "head Base* 256x768 d weight" in out and "* on the CPU" in out


def test_a_wrong_gradient_fails_against_the_independent_truth(monkeypatch):
    real = electra_fast.generator_loss_and_sample

    def perturbed_d_hidden(hidden, *args, **kwargs):
        loss, sampled, predicted = real(hidden, *args, **kwargs)
        nudge = 1e-4 * hidden.float().sum()  # same loss value, d hidden off by 1e-4 everywhere
        return loss + nudge - nudge.detach(), sampled, predicted

    monkeypatch.setattr(electra_fast, "generator_loss_and_sample", perturbed_d_hidden)
    results = {r.check: r for r in check.head_checks(CPU, torch.float32, "t", 300, 32, eager_allowance=False)}
    assert not results["head t d hidden"].passed
    assert all(results[f"head t {q}"].passed for q in ("loss", "d weight", "d bias", "samples = reference"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_allowance_widens_the_limit_by_eagers_own_error(dtype):
    results = check.head_checks(CPU, dtype, "t", 300, 32, eager_allowance=True)
    assert all(r.passed for r in results)
    grads = [r for r in results if " d " in r.check]
    assert all(r.limit > check._tolerance(dtype) for r in grads)


def test_a_kernel_that_cannot_launch_is_a_fail_row(monkeypatch, capsys):
    def out_of_resources(*args, **kwargs):
        raise RuntimeError("out of resource: shared memory, Required: 245760, Hardware limit: 232448\nmore")

    monkeypatch.setattr(electra_fast, "generator_loss_and_sample", out_of_resources)
    monkeypatch.setattr(check, "HEAD_SHAPES", (("Small", 64, 16),))
    results = check.run_checks("cpu")
    heads = [r for r in results if r.check.startswith("head")]
    assert [r.dtype for r in heads] == ["float32", "bfloat16", "float16"]
    assert all(not r.passed and r.note.startswith("RuntimeError: out of resource") for r in heads)
    assert all(r.passed for r in results if not r.check.startswith("head"))  # the table went on
    assert check.main("cpu") == 1
    assert "FAIL  RuntimeError: out of resource: shared memory" in capsys.readouterr().out
