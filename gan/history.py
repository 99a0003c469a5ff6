"""The training history of a GAN: one record per step, exported as CSV and JSON.

A record is a flat dict with the fields of `FIELDS` (the trainer fills them all):

    history = History()
    history.append({"step": 0, "epoch": 0, "d_loss": 1.38, ...})
    history.column("d_loss")          # float64 array, NaN where a record lacks the field
    history.to_csv(run_dir / "history.csv"); history.to_json(run_dir / "history.json")

Both files are written atomically (a temporary file, then os.replace), so a reader never sees half
a file. In JSON, NaN and infinities become null (standard JSON has no NaN); they read back as NaN.
"""
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from nnbox.serialization import atomic_write

# field: what it holds
FIELD_DOCS = {
    "step": "global step index (0-based, counts every turn, trained or not)",
    "epoch": "epoch index (0-based)",
    "d_loss": "discriminator loss on this turn's real and fake batch (sum of the two means)",
    "g_loss": "generator loss, against D after this turn's update of D (if any)",
    "d_real": "D(x): mean sigmoid of D's logits on the real batch (raw mean output for non-BCE losses)",
    "d_fake": "D(G(z)): the same on the fake batch, before D's update",
    "d_acc_real": "fraction of real images D called real",
    "d_acc_fake": "fraction of fake images D called fake",
    "g_success": "fraction of fake images D called real after this turn's update of D (G fooled D)",
    "train_d": "1 when D trained this turn, 0 when the balancing rule skipped it",
    "train_g": "1 when G trained this turn, 0 when the balancing rule skipped it",
    "reason": "the balancing rule's reason for this turn's decision",
    "noise_std": "instance-noise std used this turn (0 without instance noise)",
    "images_per_sec": "real images per second of this step's computation (data loading excluded)",
    "step_seconds": "seconds this step took (forward, backward, updates, one fetch of the scalars; on a GPU, "
                    "CycleGAN fetches before its backward and updates, whose queued work counts in the next step)",
}
FIELDS = tuple(FIELD_DOCS)
INT_FIELDS = ("step", "epoch", "train_d", "train_g")
TEXT_FIELDS = ("reason",)


class History:
    """An append-only list of per-step records (dicts), with column access and CSV/JSON export."""

    def __init__(self, records=None):
        self.records = [dict(r) for r in records] if records else []

    def append(self, record):
        self.records.append(dict(record))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]

    @property
    def fields(self):
        """FIELDS first, then any other keys the records carry, in order of first appearance."""
        extra = []
        for record in self.records:
            extra += [k for k in record if k not in FIELDS and k not in extra]
        return [f for f in FIELDS if any(f in r for r in self.records)] + extra

    def column(self, name):
        """The values of field `name` as a float64 array (booleans as 0/1, missing as NaN)."""
        if name in TEXT_FIELDS:
            raise ValueError(f"History.column: {name!r} is text; read it with [r[{name!r}] for r in history]")
        return np.array([_as_float(r.get(name)) for r in self.records], dtype=np.float64)

    def epochs(self):
        """Sorted epoch indices present in the history."""
        return sorted({int(r["epoch"]) for r in self.records if "epoch" in r})

    def epoch_summary(self):
        """One dict per epoch: the mean of every numeric field, the steps, and how often D and G trained."""
        summary = []
        for epoch in self.epochs():
            rows = [r for r in self.records if int(r.get("epoch", -1)) == epoch]
            sub = History(rows)
            entry = {"epoch": epoch, "steps": len(rows)}
            for name in sub.fields:
                if name in TEXT_FIELDS or name in ("step", "epoch"):
                    continue
                values = sub.column(name)
                finite = values[np.isfinite(values)]
                entry[name] = float(finite.mean()) if finite.size else float("nan")
            summary.append(entry)
        return summary

    def truncate(self, n):
        """Keep the first n records (used when a run resumes from a checkpoint)."""
        del self.records[n:]

    # ------------------------------------------------------------------ export
    def to_csv(self, path):
        """Write every record as a CSV row (header: the fields); atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            writer.writerow({k: _csv_value(v) for k, v in record.items()})
        atomic_write_text(path, buffer.getvalue())

    def to_json(self, path):
        """Write the records as a JSON list of objects (NaN/inf as null); atomically."""
        atomic_write_text(path, self.dumps(indent=None))

    def dumps(self, indent=None):
        """The records as a JSON string (standard JSON: NaN/inf written as null)."""
        return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in self.records], indent=indent)

    @classmethod
    def loads(cls, text):
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError("History.loads: expected a JSON list of records")
        return cls([{k: (float("nan") if v is None and k not in TEXT_FIELDS else v) for k, v in r.items()}
                     for r in records])

    @classmethod
    def from_json(cls, path):
        return cls.loads(Path(path).read_text())

    @classmethod
    def from_csv(cls, path):
        """Read a CSV written by `to_csv` (integer fields as int, text as str, the rest as float)."""
        records = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                record = {}
                for k, v in row.items():
                    if k in TEXT_FIELDS:
                        record[k] = v
                    elif k in INT_FIELDS:
                        record[k] = int(float(v)) if v not in ("", None) else None
                    else:
                        record[k] = float(v) if v not in ("", None) else float("nan")
                records.append(record)
        return cls(records)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self):
        """{'records_json': str}: the whole history as one string (checkpoint-friendly)."""
        return {"records_json": self.dumps()}

    def load_state_dict(self, state):
        self.records = History.loads(str(state["records_json"])).records


def _as_float(value):
    if value is None or value == "":
        return float("nan")
    return float(value)


def _json_value(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _csv_value(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # full precision; 'nan'/'inf' read back with float()
    return value


def atomic_write_bytes(path, data):
    """Write `data` to `path` atomically (nnbox.serialization.atomic_write), making its folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))
