"""One self-contained HTML page for a GAN run: plots, sample grids, the GIF, the decisions, the config.

The trainer writes it at the end of `fit`; for a run in progress or an older run:

    python -m gan.report RUN_DIR            # writes RUN_DIR/report.html (and refreshes plots, GIF, CSV/JSON)

It reads RUN_DIR/history.json (else history.csv), RUN_DIR/config.json and RUN_DIR/samples/epoch_*.png,
and writes RUN_DIR/plots/*.png, RUN_DIR/samples.gif, RUN_DIR/history.{csv,json} and RUN_DIR/report.html.
Pictures are embedded in the page (base64 data URIs), so report.html can be copied or mailed alone.
A section that another tool added between `<!-- gan.NAME -->` and `<!-- /gan.NAME -->` (the
evaluation of `python -m gan.evaluate`) is kept when the page is rebuilt.
"""
import argparse
import base64
import html
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

from .cli import fail
from .history import History, atomic_write_text
from .trainer import SAMPLES_DIR, epoch_grids
from .visualize import make_gif, plot_all

PLOTS_DIR = "plots"
GIF_NAME = "samples.gif"
REPORT_NAME = "report.html"
MAX_REASONS_SHOWN = 12
# A section another tool inserts (gan.evaluate): kept when the page is rebuilt.
_ADDED_SECTION = re.compile(r"<!-- (gan\.[a-z_]+) -->.*?<!-- /\1 -->", re.S)
MAX_GRIDS_SHOWN = 6  # evenly spaced epochs, the first and the last included


def sample_frames(run_dir):
    """The sample grids of a run, in epoch order: RUN_DIR/samples/epoch_XXX.png (not a user's copies there)."""
    return epoch_grids(Path(run_dir) / SAMPLES_DIR)


def load_history(run_dir):
    """The run's History from history.json, else history.csv; a clear error when neither exists."""
    run_dir = Path(run_dir)
    if (run_dir / "history.json").is_file():
        return History.from_json(run_dir / "history.json")
    if (run_dir / "history.csv").is_file():
        return History.from_csv(run_dir / "history.csv")
    raise FileNotFoundError(f"{run_dir} has no history.json or history.csv: is it a GAN run folder "
                            f"(the --out of examples/faces_gan.py) and has a step finished?")


def load_config(run_dir):
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build_report(run_dir, history=None, config=None, title=None):
    """Write plots, GIF, history CSV/JSON and report.html for `run_dir`; return {name: path}."""
    run_dir = Path(run_dir)
    history = load_history(run_dir) if history is None else history
    config = load_config(run_dir) if config is None else config
    outputs = {"history_csv": run_dir / "history.csv", "history_json": run_dir / "history.json"}
    history.to_csv(outputs["history_csv"])
    history.to_json(outputs["history_json"])
    plots = plot_all(history, run_dir / PLOTS_DIR) if len(history) else {}
    outputs.update({f"plot_{name}": path for name, path in plots.items()})
    frames = sample_frames(run_dir)
    if frames:
        outputs["gif"] = make_gif(frames, run_dir / GIF_NAME)
    epoch_log = json.loads((run_dir / "epochs.json").read_text()) if (run_dir / "epochs.json").is_file() else []
    page = render_html(history, config, plots, frames, outputs.get("gif"), title or f"GAN run {run_dir.name}",
                       epoch_log)
    outputs["report"] = run_dir / REPORT_NAME
    if outputs["report"].is_file():  # keep the sections other tools added (gan.evaluate's)
        kept = "".join(m.group(0) + "\n" for m in _ADDED_SECTION.finditer(outputs["report"].read_text()))
        page = page.replace("</body></html>", kept + "</body></html>")
    atomic_write_text(outputs["report"], page)
    return outputs


# --------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.text { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; }
.grids { display: flex; flex-wrap: wrap; gap: 12px; } .grids figure { margin: 0; }
figcaption { font-size: 0.8em; color: #555; text-align: center; }
.note { color: #555; font-size: 0.9em; }
"""


def _data_uri(path):
    path = Path(path)
    kind = {"png": "image/png", "gif": "image/gif"}[path.suffix.lower().lstrip(".")]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path, alt):
    return f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}">'


def _fmt(value):
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows, columns, text_columns=()):
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"text" if c in text_columns else ""}">{_fmt(row.get(c, ""))}</td>'
                        for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _decision_rows(history):
    """How many turns trained D and G, D only, G only; and the most frequent reasons."""
    combos = Counter()
    reasons = Counter()
    for record in history:
        d, g = bool(record.get("train_d")), bool(record.get("train_g"))
        combos[{(True, True): "D and G", (True, False): "D only", (False, True): "G only",
                (False, False): "neither"}[(d, g)]] += 1
        reasons[_reason_kind(str(record.get("reason", "")))] += 1
    total = max(1, len(history))
    combo_rows = [{"trained": k, "turns": v, "share": v / total} for k, v in combos.most_common()]
    reason_rows = [{"reason (numbers masked)": k, "turns": v} for k, v in reasons.most_common(MAX_REASONS_SHOWN)]
    return combo_rows, reason_rows


def _reason_kind(reason):
    """The reason with its measured numbers replaced by '#', so that reasons of one kind group together."""
    out, previous_digit = [], False
    for ch in reason:
        is_number = ch.isdigit() or (ch == "." and previous_digit)
        if is_number and not previous_digit:
            out.append("#")
        elif not is_number:
            out.append(ch)
        previous_digit = is_number
    return "".join(out)


def render_html(history, config, plots, frames, gif, title, epoch_log=()):
    """The report page as a string (pictures embedded). epoch_log: the trainer's per-epoch wall times."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    summary = history.epoch_summary()
    if summary:
        last = summary[-1]
        parts.append(f"<p>{len(history)} steps over {len(summary)} epoch(s). Last epoch: D loss "
                     f"{_fmt(last.get('d_loss'))}, G loss {_fmt(last.get('g_loss'))}, D(x) {_fmt(last.get('d_real'))}, "
                     f"D(G(z)) {_fmt(last.get('d_fake'))}, {_fmt(last.get('images_per_sec'))} images/s.</p>")
    else:
        parts.append("<p class='note'>No step recorded yet.</p>")
    if gif:
        parts.append(f"<h2>Samples across epochs (fixed noise)</h2>{_img(gif, 'samples across epochs')}")
    if frames:
        parts.append("<h2>Sample grids</h2><div class='grids'>")
        picks = sorted({round(i * (len(frames) - 1) / (MAX_GRIDS_SHOWN - 1)) for i in range(MAX_GRIDS_SHOWN)})
        for frame in (frames[i] for i in picks if i < len(frames)):
            parts.append(f"<figure>{_img(frame, frame.stem)}<figcaption>{html.escape(frame.stem)}</figcaption></figure>")
        parts.append("</div>")
    captions = {"losses": "Losses (D and G in separate panels)",
                "accuracy": "D(x), D(G(z)); D accuracy on real and fake, G success",
                "balance": "Balancing decisions", "throughput": "Throughput"}
    for name, path in plots.items():
        parts.append(f"<h2>{html.escape(captions.get(name, name))}</h2>{_img(path, name)}")
    if summary:
        columns = [c for c in ("epoch", "steps", "d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake",
                               "g_success", "train_d", "train_g", "images_per_sec") if c in summary[0]]
        rows = [{**row, "epoch": row["epoch"] + 1} for row in summary]
        parts.append("<h2>Per epoch (means over the steps)</h2>" + _table(rows, columns))
        if epoch_log:
            rows = [{**e, "epoch": int(e["epoch"]) + 1} for e in epoch_log]
            parts.append("<p class='note'>Wall-clock time per epoch (data loading, sampling and checkpoint "
                         "included):</p>" + _table(rows, ["epoch", "seconds", "images", "images_per_sec"]))
        combo_rows, reason_rows = _decision_rows(history)
        parts.append("<h2>Decisions</h2>" + _table(combo_rows, ["trained", "turns", "share"], ("trained",)))
        parts.append(_table(reason_rows, ["reason (numbers masked)", "turns"], ("reason (numbers masked)",)))
    if config:
        rows = [{"setting": k, "value": json.dumps(v) if not isinstance(v, str) else v}
                for k, v in _flatten(config).items()]
        parts.append("<h2>Configuration</h2>" + _table(rows, ["setting", "value"], ("setting", "value")))
    parts.append("<p class='note'>Files: history.csv, history.json, plots/*.png, samples/epoch_*.png, "
                 "samples.gif, checkpoint.npz (beside this page).</p></body></html>")
    return "\n".join(parts)


def _flatten(config, prefix=""):
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder (the --out of examples/faces_gan.py)")
    parser.add_argument("--title", default=None, help="the page's title (default: 'GAN run <folder name>')")
    args = parser.parse_args(argv)
    try:
        outputs = build_report(args.run_dir, title=args.title)
    except (OSError, ValueError) as error:     # no run folder or history, an unreadable one
        return fail("gan.report", error)
    print(f"wrote {outputs['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
