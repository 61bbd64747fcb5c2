"""Summary rows, summary.json validation, plots and report.md."""

import json

import pytest

from agentprm.pipeline.report import (
    SummaryError,
    headline_rows,
    plot_best_of_n_curve,
    plot_calibration,
    plot_success_per_iteration,
    plot_task_types,
    read_summary,
    summary_row,
    write_report,
    write_summary,
)
from agentprm.pipeline.results import SuccessTable, wilson_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_table():
    """4 episodes: pick 2/2 (10 + 14 steps), clean 1/2 (20 + 30 steps) -> 3/4 solved, 18.5 mean actions."""
    table = SuccessTable()
    table.add("unseen", "pick_and_place_simple", True, 10)
    table.add("unseen", "pick_and_place_simple", True, 14)
    table.add("unseen", "pick_clean_then_place_in_recep", True, 20)
    table.add("unseen", "pick_clean_then_place_in_recep", False, 30)
    return table


def rows():
    table = hand_table()
    return [summary_row("pi_0", 0, "policy", 1, None, table),
            summary_row("pi_0", 0, "bon", 4, "Q_0", table),
            summary_row("pi_1", 1, "policy", 1, None, table),
            summary_row("pi_1", 1, "bon", 4, "Q_0", table)]


def test_summary_row_exact_values():
    row = summary_row("pi_1", 1, "bon", 16, "Q_0", hand_table())
    lo, hi = wilson_interval(3, 4)
    assert row == {"agent": "pi_1", "iteration": 1, "kind": "bon", "n": 16, "prm": "Q_0", "success": 0.75,
                   "ci95": [lo, hi], "mean_actions": 18.5,
                   "by_task_type": {"pick_and_place_simple": 1.0, "pick_clean_then_place_in_recep": 0.5},
                   "episodes": 4}
    assert lo == pytest.approx(0.3006, abs=1e-4) and hi == pytest.approx(0.9544, abs=1e-4)


def test_summary_row_rejects_inconsistent_rows():
    with pytest.raises(SummaryError, match="kind"):
        summary_row("pi_1", 1, "beam", 1, None, hand_table())
    with pytest.raises(SummaryError, match="names its PRM"):
        summary_row("pi_1", 1, "bon", 16, None, hand_table())
    with pytest.raises(SummaryError, match="policy row has n=1"):
        summary_row("pi_1", 1, "policy", 16, None, hand_table())


def test_write_read_round_trip(tmp_path):
    path = write_summary(tmp_path / "summary.json", "alfworld", "unseen", 4, 30, rows())
    summary = read_summary(path)
    assert summary["schema_version"] == 1
    assert (summary["env"], summary["split"], summary["eval_games"], summary["max_steps"]) == ("alfworld", "unseen",
                                                                                                4, 30)
    assert summary["rows"] == rows()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("schema_version"), "incompatible agentprm version .no schema_version"),
    (lambda s: s.update(schema_version=2), "incompatible agentprm version .schema_version 2"),
    (lambda s: s.pop("env"), "missing field 'env'"),
    (lambda s: s.update(max_steps=0), "max_steps: expected an integer >= 1"),
    (lambda s: s["rows"][1].update(success=1.5), r"rows\[1\].success: expected a number in \[0, 1\]"),
    (lambda s: s["rows"][0].update(ci95=[0.5]), r"rows\[0\].ci95: expected \[lo, hi\]"),
    (lambda s: s["rows"][0].update(ci95=[0.9, 0.1]), r"rows\[0\].ci95: lo > hi"),
    (lambda s: s["rows"][2].pop("mean_actions"), r"rows\[2\].mean_actions"),
    (lambda s: s["rows"][0].update(n=True), r"rows\[0\].n: expected an integer"),
    (lambda s: s["rows"][3]["by_task_type"].update(heat="high"), r"by_task_type\['heat'\]"),
])
def test_read_summary_names_the_problem(tmp_path, edit, message):
    path = write_summary(tmp_path / "summary.json", "alfworld", "unseen", 4, 30, rows())
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))
    with pytest.raises(SummaryError, match=message):
        read_summary(path)


def test_read_summary_reports_missing_and_torn_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="agentprm eval"):
        read_summary(tmp_path / "absent.json")
    torn = tmp_path / "summary.json"
    torn.write_text('{"schema_version": 1, "rows": [')
    with pytest.raises(SummaryError, match="not valid JSON"):
        read_summary(torn)


def test_write_summary_refuses_an_invalid_row(tmp_path):
    bad = rows()
    bad[0]["agent"] = 3
    with pytest.raises(SummaryError, match=r"rows\[0\].agent"):
        write_summary(tmp_path / "summary.json", "alfworld", "unseen", 4, 30, bad)
    assert not (tmp_path / "summary.json").exists()


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000


def test_plots_are_valid_deterministic_pngs(tmp_path):
    curve = [summary_row("pi_1", 1, "policy", 1, None, hand_table())]
    curve += [summary_row("pi_1", 1, "bon", n, "Q_0", hand_table()) for n in (2, 4, 8, 16, 32)]
    bins = [{"lo": i / 5, "hi": (i + 1) / 5, "count": c, "mean_pred": (i + 0.5) / 5, "mean_target": t}
            for i, (c, t) in enumerate([(10, 0.05), (0, 0.0), (7, 0.5), (3, 0.6), (12, 0.95)])]
    bins[1].update(mean_pred=None, mean_target=None)  # an empty bin, as prm_training writes it
    paths = [plot_success_per_iteration(rows(), tmp_path / "a" / "iterations.png"),
             plot_best_of_n_curve(curve, tmp_path / "curve.png"),
             plot_calibration(bins, tmp_path / "calibration.png"),
             plot_task_types(rows(), tmp_path / "types.png")]
    for path in paths:
        assert_png(path)
    again = plot_best_of_n_curve(curve, tmp_path / "curve2.png")
    assert again.read_bytes() == paths[1].read_bytes()


def test_headline_rows_leave_out_the_extra_points_of_a_scaling_curve():
    main = rows()
    curve = [summary_row("pi_1", 1, "bon", n, "Q_0", hand_table()) for n in (2, 8, 16, 32)]
    assert headline_rows(main + curve) == main  # N=4 is the size evaluated at every iteration


def test_calibration_bins_must_carry_their_fields(tmp_path):
    with pytest.raises(ValueError, match=r"bin 0 lacks \['mean_target'\]"):
        plot_calibration([{"lo": 0, "hi": 1, "count": 1, "mean_pred": 0.5}], tmp_path / "c.png")


def test_report_has_the_table_plots_and_extra_sections(tmp_path):
    summary_path = write_summary(tmp_path / "summary.json", "alfworld", "unseen", 4, 30, rows())
    plot_calibration([{"lo": 0, "hi": 1, "count": 4, "mean_pred": 0.4, "mean_target": 0.5}],
                     tmp_path / "plots" / "calibration.png")
    report = write_report(tmp_path, summary_path, {"Command": "`agentprm run configs/quickstart.yaml`",
                                                   "Run time": "3 min 12 s"})
    text = report.read_text()
    assert report == tmp_path / "report.md"
    assert ("| Agent | Success % (95% CI) | Mean actions | Episodes | Pick | Clean | Heat | Cool | Look | Pick2 |"
            in text)
    assert "| pi_1 | 75.0 (30.1–95.4) | 18.5 | 4 | 100.0 | 50.0 | – | – | – | – |" in text
    assert "| BoN(pi_0, Q_0), N=4 | 75.0 (30.1–95.4) | 18.5 | 4 | 100.0 | 50.0 | – | – | – | – |" in text
    for name in ("success_per_iteration.png", "task_types.png", "best_of_n.png", "calibration.png"):
        assert f"](plots/{name})" in text
        assert_png(tmp_path / "plots" / name)
    assert text.index("## Command") < text.index("## Run time")
    assert "3 min 12 s" in text


def test_report_for_another_env_shows_its_own_task_types(tmp_path):
    table = SuccessTable()
    table.add("test", "coin", True, 5)
    table.add("test", "cookingworld", False, 30)
    summary = {"schema_version": 1, "env": "twx", "split": "test", "eval_games": 2, "max_steps": 30,
               "rows": [summary_row("pi_0", 0, "policy", 1, None, table)]}
    text = write_report(tmp_path, summary).read_text()
    assert "| Agent | Success % (95% CI) | Mean actions | Episodes | coin | cookingworld |" in text
    assert "| pi_0 | 50.0 (" in text and "| 17.5 | 2 | 100.0 | 0.0 |" in text
    assert "best_of_n.png" not in text  # one N per agent: no scaling curve


def test_training_notes_say_which_monitor_reading_was_kept_and_where_the_best_was(tmp_path):
    from agentprm.pipeline.run_report import _training_notes

    readings = [{"step": 0, "prm_score": 0.48, "success": 0.66}, {"step": 150, "prm_score": 0.49, "success": 0.60}]
    (tmp_path / "iter_0").mkdir()
    (tmp_path / "iter_1" / "policy").mkdir(parents=True)
    (tmp_path / "iter_1" / "policy" / "kl_summary.json").write_text(json.dumps({"steps": 150, "monitor": {
        "readings": readings, "selected_step": 150, "best_step": 0, "kept": "last", "hacking_warnings": [150]}}))
    notes = _training_notes(tmp_path)
    assert "0: 0.480/66%, 150: 0.490/60%; kept the last reading, step 150 (the best at step 0); reward-hacking " \
           "warnings at steps [150]" in notes
    summary = json.loads((tmp_path / "iter_1" / "policy" / "kl_summary.json").read_text())
    summary["monitor"] |= {"selected_step": 0, "kept": "best"}
    (tmp_path / "iter_1" / "policy" / "kl_summary.json").write_text(json.dumps(summary))
    assert "kept the best reading, step 0; reward" in _training_notes(tmp_path)
