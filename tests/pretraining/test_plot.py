"""`electra-fast plot`: several runs' log.jsonl in one figure; a clear error for a folder without a log or a metric
no run logged."""
import json

import pytest

from electra_fast.cli import main as cli_main

pytest.importorskip("matplotlib")


def _run(folder, losses, valid_every=2):
    folder.mkdir()
    with open(folder / "log.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            record = {"step": step, "loss": loss, "tokens": 512 * step, "total_flops": 1e9 * step}
            if step % valid_every == 0:
                record["valid_loss"] = loss + 0.1
            f.write(json.dumps(record) + "\n")
    return str(folder)


def test_plot_writes_one_png_of_several_runs(tmp_path, capsys):
    import matplotlib.image

    runs = [_run(tmp_path / "electra", [5, 4, 3, 2.5]), _run(tmp_path / "mlm", [6, 5.5, 5, 4.8])]
    out = tmp_path / "fig.png"
    assert cli_main(["plot", *runs, "--x", "flops", "--metrics", "loss", "valid_loss", "--out", str(out)]) == 0
    image = matplotlib.image.imread(out)
    assert image.shape[1] > image.shape[0] * 1.5  # two panels side by side
    assert image.std() > 0.01  # not blank
    again = tmp_path / "one.png"
    assert cli_main(["plot", runs[0], "--x", "tokens", "--out", str(again)]) == 0
    assert again.read_bytes() != out.read_bytes()


@pytest.mark.parametrize("make,extra,message", [
    (lambda d: d.mkdir(), [], "no log.jsonl"),
    (lambda d: _run(d, [1.0, 2.0]), ["--metrics", "rtd_auc"], "no run logged 'rtd_auc'"),
])
def test_plot_refuses_in_one_line(tmp_path, capsys, make, extra, message):
    run = tmp_path / "run"
    make(run)
    out = tmp_path / "fig.png"
    assert cli_main(["plot", str(run), "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("electra-fast plot: error:") and message in error[0]
    assert not out.exists()
