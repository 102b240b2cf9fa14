"""course_lib.examples.ch06_plots: every figure draws from stored results, text inside it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from course_lib.examples import ch06_plots

FIGURES = {
    "perf_concurrency": ch06_plots.plot_concurrency,
    "perf_cpu": ch06_plots.plot_cpu,
    "perf_uvloop": ch06_plots.plot_uvloop,
    "perf_eager_tasks": ch06_plots.plot_eager,
    "perf_profile": ch06_plots.plot_profile,
    "queue_peers": ch06_plots.plot_peers,
    "queue_scaling": ch06_plots.plot_scaling,
}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_draws_and_keeps_every_text_inside_the_figure(name):
    result = ch06_plots.load(name)
    fig = FIGURES[name](result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        # Each axes with its ticks, labels and title, and each legend: inside the figure.
        parts = [ax.get_tightbbox(renderer) for ax in fig.axes]
        parts += [legend.get_window_extent(renderer) for legend in fig.legends]
        for ext in parts:
            assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1, (name, ext)
            assert ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, (name, ext)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", ["perf_cpu", "perf_uvloop", "perf_profile", "queue_peers",
                                  "queue_scaling"])
def test_value_labels_stay_inside_their_axes(name):
    fig = FIGURES[name](ch06_plots.load(name))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            inside = ax.get_window_extent(renderer)
            for text in ax.texts:
                ext = text.get_window_extent(renderer)
                assert inside.x0 <= ext.x0 and ext.x1 <= inside.x1 + 1, text.get_text()
    finally:
        plt.close(fig)


def test_machine_line_names_the_benchmark_python_and_load():
    line = ch06_plots.machine_line(ch06_plots.load("perf_cpu"))
    assert line.startswith("perf_cpu: ")
    assert "CPython" in line and "load" in line
