"""Balancing rules: before each turn (one batch), decide whether D and G train.

A rule is a small object with `decide(stats) -> Decision` and `state_dict()/load_state_dict()` for
resuming. `stats` is the StepStats of the previous turn (None on the first). Every Decision carries
a reason, and the trainer records every decision, so a run can be explained afterwards.

    rule = get_balance_rule("skip", d_threshold=0.9)
    decision = rule.decide(stats)          # Decision(train_d=False, train_g=True, reason="...")
"""
from dataclasses import dataclass

import numpy as np

from nnbox.backend import to_numpy


@dataclass
class StepStats:
    """What the last step measured on its batch (fractions in [0, 1]).

    d_acc_real: fraction of real images D classed as real (logit > 0).
    d_acc_fake: fraction of generated images D classed as fake (logit < 0).
    d_acc: D's accuracy over both halves; the mean of the two when not given.
    g_success: fraction of generated images D classed as real (logit > 0): how often G fooled D.
    """

    d_acc_real: float
    d_acc_fake: float
    d_acc: float = None
    g_success: float = None

    def __post_init__(self):
        if self.d_acc is None:
            self.d_acc = 0.5 * (self.d_acc_real + self.d_acc_fake)
        if self.g_success is None:
            self.g_success = 1.0 - self.d_acc_fake

    @classmethod
    def from_logits(cls, real_logits, fake_logits, g_fake_logits=None):
        """Measure from D's logits on the real and the fake batch (and, when given, on the fakes
        of the generator's step, which then define g_success)."""
        real, fake = to_numpy(real_logits), to_numpy(fake_logits)
        g_fake = fake if g_fake_logits is None else to_numpy(g_fake_logits)
        return cls(d_acc_real=float(np.mean(real > 0)), d_acc_fake=float(np.mean(fake < 0)),
                   g_success=float(np.mean(g_fake > 0)))


@dataclass
class Decision:
    """Whether D and G train this turn, and why."""

    train_d: bool
    train_g: bool
    reason: str


class Alternate:
    """1:1: every turn trains D (one step), then G (one step)."""

    name = "alternate"

    def decide(self, stats=None):
        return Decision(True, True, "alternate: one D step, then one G step")

    def state_dict(self):
        return {"rule": self.name}

    def load_state_dict(self, state):
        _check_rule(self, state)

    def __repr__(self):
        return "Alternate()"


class FixedRatio:
    """n_d D steps for every n_g G steps, in a cycle of max(n_d, n_g) turns.

    Turn i of the cycle trains D when i < n_d and G when i >= cycle - n_g, so D's steps come first:
    n_d=5, n_g=1 (the WGAN recipe) gives D, D, D, D, D+G; n_d=1, n_g=2 gives D+G, G; 1:1 is Alternate.
    """

    name = "ratio"

    def __init__(self, n_d=1, n_g=1):
        if int(n_d) != n_d or int(n_g) != n_g or n_d < 1 or n_g < 1:
            raise ValueError(f"FixedRatio: n_d and n_g must be integers >= 1, got n_d={n_d}, n_g={n_g}")
        self.n_d, self.n_g = int(n_d), int(n_g)
        self.turn = 0  # turns decided so far

    @property
    def cycle(self):
        return max(self.n_d, self.n_g)

    def decide(self, stats=None):
        position = self.turn % self.cycle
        self.turn += 1
        train_d = position < self.n_d
        train_g = position >= self.cycle - self.n_g
        return Decision(train_d, train_g,
                        f"ratio {self.n_d}:{self.n_g}: turn {position + 1} of {self.cycle} trains "
                        + " and ".join(name for name, on in (("D", train_d), ("G", train_g)) if on))

    def state_dict(self):
        return {"rule": self.name, "n_d": self.n_d, "n_g": self.n_g, "turn": self.turn}

    def load_state_dict(self, state):
        _check_rule(self, state)
        self.n_d, self.n_g, self.turn = int(state["n_d"]), int(state["n_g"]), int(state["turn"])

    def __repr__(self):
        return f"FixedRatio(n_d={self.n_d}, n_g={self.n_g})"


class SkipTooGood:
    """The course's rule: if one network is too good, skip its turn.

    Skip D when its accuracy on the last batch, stats.d_acc, is above d_threshold; skip G when its
    success rate, stats.g_success, is above g_threshold. Never both: when both are above (possible,
    as D's accuracy is measured before its update and G's success after it) both train. Guard: a network already skipped
    max_consecutive_skips turns in a row trains anyway, so training cannot stall (its statistics
    may stay stale while it is skipped). The first turn (stats None) trains both.
    """

    name = "skip"

    def __init__(self, d_threshold=0.9, g_threshold=0.9, max_consecutive_skips=5):
        for label, value in (("d_threshold", d_threshold), ("g_threshold", g_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SkipTooGood: {label} must be in [0, 1], got {value}")
        if int(max_consecutive_skips) != max_consecutive_skips or max_consecutive_skips < 0:
            raise ValueError(f"SkipTooGood: max_consecutive_skips must be an integer >= 0, "
                             f"got {max_consecutive_skips}")
        self.d_threshold, self.g_threshold = float(d_threshold), float(g_threshold)
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.d_skipped = 0  # turns D has been skipped in a row
        self.g_skipped = 0

    def decide(self, stats=None):
        if stats is None:
            decision = Decision(True, True, "skip rule: no statistics yet, both train")
        else:
            d_good = stats.d_acc > self.d_threshold
            g_good = stats.g_success > self.g_threshold
            if d_good and g_good:
                decision = Decision(True, True, f"skip rule: D accuracy {stats.d_acc:.3f} > {self.d_threshold} "
                                    f"and G success {stats.g_success:.3f} > {self.g_threshold}: "
                                    f"never skip both, both train")
            elif d_good:
                decision = self._skip("D", stats.d_acc, self.d_threshold, self.d_skipped, "accuracy")
            elif g_good:
                decision = self._skip("G", stats.g_success, self.g_threshold, self.g_skipped, "success")
            else:
                decision = Decision(True, True, f"skip rule: D accuracy {stats.d_acc:.3f} <= {self.d_threshold}, "
                                    f"G success {stats.g_success:.3f} <= {self.g_threshold}: both train")
        self.d_skipped = 0 if decision.train_d else self.d_skipped + 1
        self.g_skipped = 0 if decision.train_g else self.g_skipped + 1
        return decision

    def _skip(self, who, value, threshold, skipped, measure):
        too_good = f"skip rule: {who} {measure} {value:.3f} > {threshold}"
        if skipped >= self.max_consecutive_skips:
            return Decision(True, True, f"{too_good}, but {who} was skipped {skipped} turns in a row "
                                        f"(max_consecutive_skips={self.max_consecutive_skips}): both train")
        return Decision(who != "D", who != "G", f"{too_good}: skip {who}")

    def state_dict(self):
        return {"rule": self.name, "d_threshold": self.d_threshold, "g_threshold": self.g_threshold,
                "max_consecutive_skips": self.max_consecutive_skips,
                "d_skipped": self.d_skipped, "g_skipped": self.g_skipped}

    def load_state_dict(self, state):
        _check_rule(self, state)
        self.d_threshold, self.g_threshold = float(state["d_threshold"]), float(state["g_threshold"])
        self.max_consecutive_skips = int(state["max_consecutive_skips"])
        self.d_skipped, self.g_skipped = int(state["d_skipped"]), int(state["g_skipped"])

    def __repr__(self):
        return (f"SkipTooGood(d_threshold={self.d_threshold}, g_threshold={self.g_threshold}, "
                f"max_consecutive_skips={self.max_consecutive_skips})")


BALANCE_RULES = {"alternate": Alternate, "ratio": FixedRatio, "skip": SkipTooGood}


def get_balance_rule(name, **kwargs):
    """A new rule by name: "alternate", "ratio" (n_d, n_g) or "skip" (d_threshold, g_threshold,
    max_consecutive_skips)."""
    if name not in BALANCE_RULES:
        raise ValueError(f"unknown balance rule {name!r}: use one of {sorted(BALANCE_RULES)}")
    return BALANCE_RULES[name](**kwargs)


def _check_rule(rule, state):
    if state.get("rule") != rule.name:
        raise ValueError(f"{type(rule).__name__}.load_state_dict: the state is of rule {state.get('rule')!r}, "
                         f"not {rule.name!r}")
