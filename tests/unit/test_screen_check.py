"""shb.screen_check (the seeded recall sample) and shb.scorers.attribution.pooled, without a model."""

from __future__ import annotations

import pytest

from shb import screen_check


def test_draw_is_seeded_ordered_and_bounded():
    population = [(layer, h) for layer in range(4) for h in range(8)]
    a = screen_check.draw(population, 5, 0, "ships", 3)
    assert a == screen_check.draw(population, 5, 0, "ships", 3) and len(a) == 5 and a == sorted(a)
    assert a != screen_check.draw(population, 5, 1, "ships", 3)
    assert a != screen_check.draw(population, 5, 0, "ships", 4)
    assert screen_check.draw(population[:3], 5, 0) == population[:3]
    assert screen_check.draw(population, 0, 0) == []


def test_with_screen_defaults_spells_them_out():
    defaults = {"sample": screen_check.SAMPLE, "pool": 0}
    assert screen_check.with_screen_defaults({"kind": "ships"}, defaults) == {"kind": "ships"}
    assert screen_check.with_screen_defaults({"screen": {"top": 3}}, defaults) == {"screen": {**defaults, "top": 3}}
    assert screen_check.with_screen_defaults({"screen": {"top": 3, "sample": 0}}, defaults)["screen"]["sample"] == 0


def test_a_screened_unit_id_holds_its_defaults():
    """Writing a screen default out, or leaving it implicit, is one unit; another value is another."""
    from shb.metrics.sahara import SaharaMetric
    from shb.metrics.ships import SCREEN_DEFAULTS, ShipsMetric

    ships = ShipsMetric()
    implicit = ships.identity({"screen": {"top": 3}}, {"seed": 0})
    assert implicit == ships.identity({"screen": {"top": 3, **SCREEN_DEFAULTS}}, {"seed": 0})
    assert implicit["screen"]["sample"] == screen_check.SAMPLE and implicit["seed"] == 0
    assert implicit != ships.identity({"screen": {"top": 3, "pool": SCREEN_DEFAULTS["pool"] + 1}}, {"seed": 0})
    sahara = SaharaMetric()
    assert "seed" in sahara.identity({"screen": {"top": 3}}, {"seed": 0})
    assert "seed" not in sahara.identity({"screen": {"top": 3, "sample": 0}}, {"seed": 0})  # nothing random left


def test_pooled_adds_any_prompts_best_heads():
    torch = pytest.importorskip("torch")  # noqa: F841 (shb.scorers.attribution imports it)
    from shb.scorers.attribution import pooled

    chosen = [[(0, 1), (0, 2), (1, 0)], [(0, 1), (2, 2), (3, 3)]]
    exact = [[0.5, 0.1, 0.9], [0.2, 0.8, 0.05]]
    assert pooled(chosen, exact, 1) == [[(2, 2)], [(1, 0)]]
    assert pooled(chosen, exact, 2) == [[(2, 2)], [(1, 0)]]  # (0, 1) is second on both: verified already
    assert pooled(chosen, exact, 0) == [[], []]


def test_upper_share_brackets_the_rate():
    from shb.reports.screen_recall import upper_share

    assert upper_share(0, 0) == 1.0 and upper_share(5, 5) == 1.0
    assert upper_share(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)  # the exact zero-hit bound
    assert 0.1 < upper_share(10, 100) < 0.2
