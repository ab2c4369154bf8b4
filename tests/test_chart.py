"""The loss chart `tuneflow status FLOW_ID` prints: points land where their values say."""

from local.chart import plot


def test_each_series_lands_on_its_rows_and_columns_with_axis_labels_and_legend():
    lines = plot({"train loss": [(1, 4.0), (3, 2.0)], "eval loss": [(0, 3.0), (3, 1.0)]}, width=4, height=4)
    grid = [line.split("┤", 1)[1] for line in lines[:4]]
    assert grid == [" •  ", "◆   ", "   •", "   ◆"]  # x 0..3 over 4 columns, y 4..1 over 4 rows
    assert [line.split("┤")[0].strip() for line in lines[:4]] == ["4", "2.5", "", "1"]  # top, middle, bottom
    assert lines[5].strip().startswith("0") and lines[5].endswith("step 3")
    assert lines[6].strip() == "• train loss   ◆ eval loss"


def test_non_finite_points_are_left_out_and_nothing_to_plot_says_so():
    assert plot({"train loss": [(1, float("nan")), (2, float("inf"))]}) == ["(no figures to plot)"]
    lines = plot({"a": [(1, 2.0), (2, 2.0)]}, width=3, height=3)  # a flat line still has a range
    assert [line.split("┤", 1)[1] for line in lines[:3]] == ["   ", "• •", "   "]
