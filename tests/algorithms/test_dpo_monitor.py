"""Reward-hacking monitor: best reading, warnings and the kept checkpoint, by hand."""

import pytest

from agentprm.algorithms.dpo_monitor import MonitorReading, RewardHackingMonitor


def test_best_is_the_highest_success_and_the_earliest_on_ties():
    monitor = RewardHackingMonitor()
    flags = [monitor.observe(MonitorReading(step, score, success)) for step, score, success in
             [(0, 0.20, 0.40), (25, 0.30, 0.50), (50, 0.35, 0.50), (75, 0.50, 0.30), (100, 0.25, 0.45)]]
    # (new best, warning): 0 first; 25 better; 50 ties (earliest kept) and scores above the best with equal
    # success: no warning; 75 PRM 0.50 > 0.30 while success 0.30 < 0.50: warning; 100 PRM below the best: none
    assert flags == [(True, False), (True, False), (False, False), (False, True), (False, False)]
    assert monitor.best == MonitorReading(25, 0.30, 0.50)
    assert monitor.summary() == {
        "selected_step": 25, "best_step": 25, "kept": "best", "hacking_warnings": [75],
        "readings": [{"step": s, "prm_score": p, "success": r} for s, p, r in
                     [(0, 0.20, 0.40), (25, 0.30, 0.50), (50, 0.35, 0.50), (75, 0.50, 0.30), (100, 0.25, 0.45)]]}


def test_tolerance_silences_small_drops_and_steps_must_increase():
    monitor = RewardHackingMonitor(tolerance=0.05)
    monitor.observe(MonitorReading(0, 0.1, 0.50))
    assert monitor.observe(MonitorReading(10, 0.9, 0.46)) == (False, False)  # drop 0.04 <= tolerance
    assert monitor.observe(MonitorReading(20, 0.9, 0.44)) == (False, True)  # drop 0.06 > tolerance
    with pytest.raises(ValueError, match="increasing step"):
        monitor.observe(MonitorReading(20, 0.0, 0.0))


def test_an_empty_monitor_selects_nothing():
    assert RewardHackingMonitor().summary() == {"selected_step": None, "best_step": None, "kept": "last",
                                                "readings": [], "hacking_warnings": []}
    assert RewardHackingMonitor().kept() is None


def test_the_margin_keeps_the_best_reading_only_when_it_beats_the_last_by_that_much():
    monitor = RewardHackingMonitor()
    for step, success in [(0, 0.66), (25, 0.62), (50, 0.68), (75, 0.60)]:
        monitor.observe(MonitorReading(step, 0.5, success))
    best, last = MonitorReading(50, 0.5, 0.68), MonitorReading(75, 0.5, 0.60)
    assert monitor.kept() == best and monitor.kept(margin=0.05) == best  # 0.68 >= 0.60 + 0.05
    assert monitor.kept(margin=0.10) == last  # 0.68 < 0.60 + 0.10: within noise, the trained policy stays
    assert monitor.kept(keep_best=False) == last
    assert monitor.summary(margin=0.10)["selected_step"] == 75 and monitor.summary(margin=0.10)["best_step"] == 50
    assert monitor.summary(margin=0.10)["kept"] == "last" and monitor.summary()["kept"] == "best"
    collapsed = RewardHackingMonitor()
    for step, success in [(0, 0.52), (75, 0.40), (150, 0.26)]:  # the online-DPO collapse of the README
        collapsed.observe(MonitorReading(step, 0.5, success))
    assert collapsed.kept(margin=0.15) == MonitorReading(0, 0.5, 0.52)
