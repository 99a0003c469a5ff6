"""examples/compare_runs.py's helpers on edge cases the two comparison examples do not reach."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compare_runs  # noqa: E402  (examples/ on the path above)

from gan.trainer import GANTrainer, TrainConfig  # noqa: E402
from gan.visualize import save_image_grid  # noqa: E402


def test_throughput_bars_take_the_longest_log(tmp_path, monkeypatch):
    """The epochs on the axis are the longest run's; each run's bars sit at its own first epochs."""
    logs = {"two epochs": [{"epoch": e, "images_per_sec": 100.0 + e} for e in range(2)],
            "three epochs": [{"epoch": e, "images_per_sec": 90.0 + e} for e in range(3)]}
    drawn = {}
    original = compare_runs.grouped_bars

    def spy(ax, positions, series, value_format=None):
        original(ax, positions, series, value_format)
        drawn["ticks"] = list(ax.get_xticks())
        drawn["bars"] = {bars.get_label(): [(round(b.get_x() + b.get_width() / 2, 3), b.get_height()) for b in bars]
                         for bars in ax.containers}

    monkeypatch.setattr(compare_runs, "grouped_bars", spy)
    assert Path(compare_runs.plot_throughput_comparison(logs, tmp_path / "throughput.png")).is_file()
    assert drawn["ticks"] == [1, 2, 3]
    assert drawn["bars"]["two epochs"] == [(0.8, 100.0), (1.8, 101.0)]
    assert drawn["bars"]["three epochs"] == [(1.2, 90.0), (2.2, 91.0), (3.2, 92.0)]


def test_a_run_without_a_completed_epoch_summarises_to_strict_json(tmp_path):
    trainer = GANTrainer.from_config(TrainConfig(image_size=16, latent_dim=4, width=2, progress=False,
                                                 report=False), tmp_path / "run")
    compare_runs.summarize({"fresh": trainer}, {}, tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert summary["fresh"]["last_epoch_means"]["d_loss"] is None


@pytest.mark.parametrize("n_samples, per_row", [(16, 4), (64, 8), (100, 10)])
def test_epoch_grids_are_cut_by_the_runs_own_row_length(tmp_path, n_samples, per_row):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"n_samples": n_samples}}))
    save_image_grid(np.zeros((n_samples, 3, 8, 8), np.float32), run / "samples" / "epoch_000.png", nrow=per_row)
    top = compare_runs._grid_rows(run / "samples" / "epoch_000.png", 2, compare_runs._grid_columns(run))
    assert top.shape[0] == 2 + 2 * (8 + 2)                      # two rows of 8-px images, 2-px padding


def test_the_loss_plot_takes_a_run_without_steps_beside_one_with_steps(tmp_path):
    from gan.history import History
    steps = History([{"epoch": e, "d_loss": 1.0 - 0.1 * i, "g_loss": 0.5 + 0.1 * i}
                     for e in range(2) for i in range(3)])
    path = compare_runs.plot_loss_comparison({"empty": History(), "trained": steps}, tmp_path / "losses.png")
    assert Path(path).is_file() and Path(path).stat().st_size > 0
    np.testing.assert_allclose(compare_runs._epoch_axis(steps), [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert len(compare_runs._epoch_axis(History())) == 0


def test_run_as_a_script_it_says_in_one_line_what_it_is(capsys):
    shown = subprocess.run([sys.executable, str(Path(compare_runs.__file__)), "--help"], capture_output=True,
                           text=True, timeout=120, cwd="/")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout == f"compare_runs.py: {compare_runs.ABOUT}\n"
    assert "examples/cifar_gan.py" in shown.stdout and "examples/mnist_latent_study.py" in shown.stdout
    assert compare_runs.main(["--epochs", "3"]) == 2
    assert capsys.readouterr().err == f"compare_runs.py: takes no options: {compare_runs.ABOUT}\n"
