"""Balancing rules on constructed sequences of StepStats."""
import numpy as np
import pytest

from gan.balance import (Alternate, Decision, FixedRatio, SkipTooGood, StepStats,
                         get_balance_rule)


def stats(d_acc, g_success):
    """StepStats with a given D accuracy and G success (the two halves equal)."""
    return StepStats(d_acc_real=d_acc, d_acc_fake=d_acc, d_acc=d_acc, g_success=g_success)


def pattern(decisions):
    return ["".join(name for name, on in (("D", d.train_d), ("G", d.train_g)) if on) for d in decisions]


def test_step_stats_defaults_and_from_logits():
    s = StepStats(d_acc_real=1.0, d_acc_fake=0.5)
    assert s.d_acc == 0.75 and s.g_success == 0.5
    real = np.array([[1.0], [2.0], [-1.0], [3.0]])
    fake = np.array([[-1.0], [0.5], [-2.0], [-3.0]])
    measured = StepStats.from_logits(real, fake)
    assert (measured.d_acc_real, measured.d_acc_fake, measured.d_acc, measured.g_success) == (0.75, 0.75, 0.75, 0.25)
    assert StepStats.from_logits(real, fake, g_fake_logits=np.ones((4, 1))).g_success == 1.0


def test_alternate_trains_both_every_turn():
    rule = Alternate()
    decisions = [rule.decide(s) for s in (None, stats(1.0, 0.0), stats(0.0, 1.0))]
    assert pattern(decisions) == ["DG"] * 3
    assert all(isinstance(d, Decision) and d.reason for d in decisions)


@pytest.mark.parametrize("n_d, n_g, expected", [
    (5, 1, ["D", "D", "D", "D", "DG"]),
    (1, 1, ["DG"]),
    (1, 3, ["DG", "G", "G"]),
    (2, 3, ["DG", "DG", "G"]),
])
def test_fixed_ratio_pattern(n_d, n_g, expected):
    rule = FixedRatio(n_d=n_d, n_g=n_g)
    decisions = [rule.decide(None) for _ in range(3 * len(expected))]
    assert pattern(decisions) == expected * 3
    assert sum(d.train_d for d in decisions) == 3 * n_d and sum(d.train_g for d in decisions) == 3 * n_g
    assert f"ratio {n_d}:{n_g}" in decisions[0].reason


def test_fixed_ratio_state_dict_round_trip():
    rule = FixedRatio(5, 1)
    for _ in range(3):
        rule.decide(None)
    resumed = FixedRatio()
    resumed.load_state_dict(rule.state_dict())
    assert (resumed.n_d, resumed.n_g) == (5, 1)
    assert pattern([resumed.decide(None) for _ in range(3)]) == pattern([rule.decide(None) for _ in range(3)]) \
        == ["D", "DG", "D"]


def test_skip_d_when_too_good():
    rule = SkipTooGood(d_threshold=0.9, g_threshold=0.9)
    decision = rule.decide(stats(0.95, 0.05))
    assert (decision.train_d, decision.train_g) == (False, True)
    assert "skip D" in decision.reason and "0.950" in decision.reason


def test_skip_g_when_too_good():
    rule = SkipTooGood(d_threshold=0.9, g_threshold=0.8)
    decision = rule.decide(stats(0.3, 0.85))
    assert (decision.train_d, decision.train_g) == (True, False)
    assert "skip G" in decision.reason


def test_skip_rule_trains_both_when_balanced_and_on_first_turn():
    rule = SkipTooGood()
    assert pattern([rule.decide(None), rule.decide(stats(0.6, 0.4)), rule.decide(stats(0.9, 0.9))]) == ["DG"] * 3


def test_skip_rule_never_skips_both():
    rule = SkipTooGood(d_threshold=0.5, g_threshold=0.5)
    decision = rule.decide(stats(0.9, 0.9))  # both "too good" (measured on different batches)
    assert (decision.train_d, decision.train_g) == (True, True)
    assert "never skip both" in decision.reason
    for d_acc in np.linspace(0, 1, 11):
        for g_success in np.linspace(0, 1, 11):
            decision = SkipTooGood(0.5, 0.5).decide(stats(d_acc, g_success))
            assert decision.train_d or decision.train_g


def test_guard_forces_training_after_max_skips():
    rule = SkipTooGood(d_threshold=0.9, max_consecutive_skips=3)
    decisions = [rule.decide(stats(0.99, 0.0)) for _ in range(9)]
    # D skipped 3 turns in a row, then trains anyway, then the count starts again
    assert pattern(decisions) == ["G", "G", "G", "DG"] * 2 + ["G"]
    assert "skipped 3 turns in a row" in decisions[3].reason


def test_guard_for_g_and_counter_reset():
    rule = SkipTooGood(g_threshold=0.7, max_consecutive_skips=2)
    seq = [stats(0.2, 0.8), stats(0.2, 0.8), stats(0.5, 0.5), stats(0.2, 0.8), stats(0.2, 0.8), stats(0.2, 0.8)]
    # a balanced turn trains G and resets its skip count
    assert pattern([rule.decide(s) for s in seq]) == ["D", "D", "DG", "D", "D", "DG"]


def test_max_consecutive_skips_zero_never_skips():
    rule = SkipTooGood(max_consecutive_skips=0)
    assert pattern([rule.decide(stats(1.0, 0.0)) for _ in range(3)]) == ["DG"] * 3


def test_skip_rule_state_dict_round_trip():
    rule = SkipTooGood(d_threshold=0.8, g_threshold=0.7, max_consecutive_skips=4)
    for _ in range(3):
        rule.decide(stats(0.95, 0.0))
    state = rule.state_dict()
    assert state["d_skipped"] == 3
    resumed = SkipTooGood()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    follow = [stats(0.95, 0.0)] * 3
    assert pattern([resumed.decide(s) for s in follow]) == pattern([rule.decide(s) for s in follow]) == ["G", "DG", "G"]


def test_load_state_dict_of_another_rule_is_an_error():
    with pytest.raises(ValueError, match="rule 'ratio', not 'skip'"):
        SkipTooGood().load_state_dict(FixedRatio().state_dict())
    Alternate().load_state_dict(Alternate().state_dict())


def test_get_balance_rule():
    assert isinstance(get_balance_rule("alternate"), Alternate)
    rule = get_balance_rule("ratio", n_d=5, n_g=1)
    assert (rule.n_d, rule.n_g) == (5, 1)
    assert get_balance_rule("skip", d_threshold=0.7).d_threshold == 0.7
    with pytest.raises(ValueError, match="unknown balance rule 'often'"):
        get_balance_rule("often")


@pytest.mark.parametrize("make, message", [
    (lambda: FixedRatio(0, 1), r"FixedRatio: n_d and n_g must be integers >= 1, got n_d=0, n_g=1"),
    (lambda: FixedRatio(1.5, 1), r"FixedRatio: n_d and n_g must be integers >= 1, got n_d=1\.5"),
    (lambda: SkipTooGood(d_threshold=1.5), r"SkipTooGood: d_threshold must be in \[0, 1\], got 1\.5"),
    (lambda: SkipTooGood(max_consecutive_skips=-1), r"max_consecutive_skips must be an integer >= 0, got -1"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
