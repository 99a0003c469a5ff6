"""Sample grids, GIFs, training plots, the history files and the HTML report, on made-up runs."""
import json

import numpy as np
import pytest
from PIL import Image

from gan import visualize
from gan.history import FIELDS, History
from gan.report import build_report, main as report_main


def fake_history(steps=120, epochs=3, seed=0):
    rng = np.random.default_rng(seed)
    history = History()
    per_epoch = steps // epochs
    for step in range(steps):
        train_d = bool(rng.random() > 0.3)
        history.append({
            "step": step, "epoch": step // per_epoch, "d_loss": float(rng.uniform(0.5, 1.5)),
            "g_loss": float(rng.uniform(0.5, 3.0)), "d_real": 0.7, "d_fake": 0.3, "d_acc_real": 0.8,
            "d_acc_fake": 0.6, "g_success": 0.4, "train_d": int(train_d), "train_g": 1,
            "reason": f"skip rule: D accuracy {rng.random():.3f} > 0.9: skip D" if not train_d else "both train",
            "noise_std": 0.0, "images_per_sec": float(rng.uniform(900, 1100)), "step_seconds": 0.05})
    return history


def test_make_grid_size_follows_the_formula_and_places_images():
    images = np.zeros((10, 3, 5, 7), np.float32)
    images[3] = 1.0                                   # image 3: white
    grid = visualize.make_grid(images, nrow=4, padding=2, pad_value=0, scale=2)
    rows, columns, h, w = 3, 4, 5 * 2, 7 * 2
    assert grid.shape == (rows * (h + 2) + 2, columns * (w + 2) + 2, 3)
    assert grid.dtype == np.uint8
    top, left = 2, 2 + 3 * (w + 2)                   # image 3 is row 0, column 3
    assert (grid[top:top + h, left:left + w] == 255).all()
    assert (grid[top:top + h, 2:2 + w] == 128).all()  # 0.0 in [-1, 1] -> 127.5 rounds to 128
    assert (grid[0] == 0).all()                       # padding


def test_to_uint8_images_converts_float_nchw_grey_and_clips():
    x = np.array([[[[-1.0, 1.0], [2.0, np.nan]]]], np.float32)   # (1, 1, 2, 2), grey
    out = visualize.to_uint8_images(x)
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 255], [255, 128]])
    uint8 = np.full((2, 4, 4, 3), 7, np.uint8)
    assert visualize.to_uint8_images(uint8) is not None and (visualize.to_uint8_images(uint8) == 7).all()
    with pytest.raises(ValueError, match="channels"):
        visualize.to_uint8_images(np.zeros((1, 2, 4, 4), np.float32))


def test_save_image_grid_writes_a_png_of_the_grid_size(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    path = visualize.save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=4, padding=2, scale=3)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (4 * (24 + 2) + 2, 4 * (24 + 2) + 2)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")),
                                      visualize.make_grid(images, 4, 2, scale=3))
    assert not list((tmp_path / "sub").glob(".*tmp"))   # no temporary file left behind


def test_make_gif_has_every_frame(tmp_path):
    paths = []
    for k in range(3):
        images = np.full((4, 3, 8, 8), -1.0 + k, np.float32)
        paths.append(visualize.save_image_grid(images, tmp_path / f"epoch_{k:03d}.png", nrow=2))
    gif = visualize.make_gif(paths, tmp_path / "samples.gif", duration_ms=100)
    with Image.open(gif) as image:
        assert image.format == "GIF"
        assert image.n_frames == 3
        assert image.size == Image.open(paths[0]).size
        image.seek(2)
        assert np.asarray(image.convert("RGB"))[5, 5].tolist() == [255, 255, 255]  # frame 3: white images
    with pytest.raises(ValueError, match="no frames"):
        visualize.make_gif([], tmp_path / "empty.gif")


@pytest.mark.parametrize("name", sorted(visualize.PLOTS))
def test_plots_are_pngs_of_the_figure_size(tmp_path, name):
    path = visualize.PLOTS[name](fake_history(), tmp_path / f"{name}.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width == 8 * visualize.FIGURE_DPI and height >= 3 * visualize.FIGURE_DPI
    assert np.asarray(Image.open(path).convert("L")).std() > 5   # something is drawn


def test_plots_handle_a_single_step_and_nan(tmp_path):
    history = fake_history(steps=1, epochs=1)
    history.records[0]["d_loss"] = float("nan")
    paths = visualize.plot_all(history, tmp_path)
    assert sorted(paths) == sorted(visualize.PLOTS) and all(p.is_file() for p in paths.values())
    with pytest.raises(ValueError, match="empty"):
        visualize.plot_all(History(), tmp_path)


def test_moving_average_skips_nan():
    np.testing.assert_allclose(visualize.moving_average([1, 2, np.nan, 4], 2), [1, 1.5, 2, 4])


def test_history_csv_and_json_round_trip_with_nan(tmp_path):
    history = fake_history(steps=6, epochs=2)
    history.records[2]["g_loss"] = float("nan")
    history.to_csv(tmp_path / "h.csv")
    history.to_json(tmp_path / "h.json")
    header = (tmp_path / "h.csv").read_text().splitlines()[0].split(",")
    assert header == list(FIELDS)
    for loaded in (History.from_csv(tmp_path / "h.csv"), History.from_json(tmp_path / "h.json")):
        assert len(loaded) == 6
        assert np.isnan(loaded[2]["g_loss"])
        for a, b in zip(loaded, history):
            assert {k: v for k, v in a.items() if k != "g_loss"} == {k: v for k, v in b.items() if k != "g_loss"}
    assert json.loads((tmp_path / "h.json").read_text())[2]["g_loss"] is None   # standard JSON: null
    summary = history.epoch_summary()
    assert [s["epoch"] for s in summary] == [0, 1] and [s["steps"] for s in summary] == [3, 3]


def test_report_of_a_run_folder(tmp_path, capsys):
    history = fake_history()
    history.to_json(tmp_path / "history.json")
    (tmp_path / "config.json").write_text(json.dumps({"train": {"loss": "non_saturating", "lr_g": 2e-4}}))
    for k in range(4):
        visualize.save_image_grid(np.full((4, 3, 8, 8), k / 4, np.float32), tmp_path / "samples" / f"epoch_{k:03d}.png")
    assert report_main([str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 + len(visualize.PLOTS)   # grids + plots, embedded
    assert page.count("data:image/gif;base64,") == 1
    for text in ("non_saturating", "D and G", "skip rule: D accuracy #", "Per epoch"):
        assert text in page
    for name in ("history.csv", "samples.gif", "plots/losses.png", "plots/balance.png", "plots/throughput.png"):
        assert (tmp_path / name).is_file()
    with Image.open(tmp_path / "samples.gif") as gif:
        assert gif.n_frames == 4


def test_report_without_a_history_says_so(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2             # bad input, as in every example (README)
    err = capsys.readouterr().err
    assert err.startswith(f"gan.report: {tmp_path} has no history.json") and err.count("\n") == 1
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)
    (tmp_path / "history.json").write_text("{not json")
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("gan.report: Expecting property name")


def test_rebuilding_the_report_keeps_an_added_evaluation_section(tmp_path):
    fake_history(steps=10, epochs=1).to_json(tmp_path / "history.json")
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    section = "<!-- gan.evaluate --><h2>Evaluation</h2><p>FID 12.3</p><!-- /gan.evaluate -->"
    (tmp_path / "report.html").write_text(page.replace("</body>", section + "</body>"))
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count(section) == 1 and page.index(section) > page.index("Per epoch")


def test_plotting_leaves_the_matplotlib_backend_alone():
    import subprocess
    import sys
    code = ("import matplotlib; matplotlib.use('svg'); import gan.visualize as v, gan.metrics; "
            "from gan.history import History; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
