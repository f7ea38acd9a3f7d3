"""Auto resolution's decisions, fed measured numbers directly (frame cost, frame interval, time)."""

from __future__ import annotations

import itertools

import pytest

from streamer.autores import AutoResolution

BOXES = [(320, 240), (640, 480), (1280, 720)]
VGA = 640 * 480
INTERVAL = 1000 / 30  # ms: a 30 fps camera
BUDGET = 0.7  # of the interval, 23.3 ms (the numbers below are worked out for it)


class Feed:
    """Frames at 30 fps on a fake clock; ``cost_at_vga(t)`` gives what a 640x480 frame costs (ms)."""

    def __init__(self, auto: AutoResolution) -> None:
        self.auto = auto
        self.t = 0.0
        self.sizes: list[tuple[int, int]] = []

    def run(self, seconds: float, cost_at_vga: float | list[float], interval_ms: float | None = INTERVAL) -> None:
        costs = itertools.cycle(cost_at_vga if isinstance(cost_at_vga, list) else [cost_at_vga])
        step = (interval_ms or INTERVAL) / 1000
        for _ in range(round(seconds / step)):
            w, h = self.auto.size
            # Cost proportional to pixels, as the controller assumes.
            self.auto.update(next(costs) * w * h / VGA, interval_ms, self.t)
            self.sizes.append(self.auto.size)
            self.t += step


def make(source: tuple[int, int] | None = (1280, 720)) -> AutoResolution:
    auto = AutoResolution(BOXES, budget=BUDGET)
    if source is not None:
        auto.set_source(*source)
    return auto


def test_starts_at_vga_and_steps_down_within_half_a_second_when_over_budget() -> None:
    auto = make((640, 480))
    assert auto.sizes == [(320, 240), (640, 480)]  # 1280x720 would be the camera's own 640x480 again
    assert auto.size == (640, 480)
    feed = Feed(auto)
    feed.run(0.2, cost_at_vga=15)  # fits (15 < 23.3): stays
    assert auto.size == (640, 480)
    feed.run(1.0, cost_at_vga=60)  # 60 ms at 640x480: over budget; 320x240 would cost ~15 ms
    assert auto.size == (320, 240)
    # Prompt: the step came within ~0.5 s (plus the few frames the average takes to cross the budget).
    first_small = feed.sizes.index((320, 240))
    assert first_small * INTERVAL / 1000 < 0.2 + 0.8, first_small
    assert auto.changes == 1


def test_steps_down_straight_to_the_largest_size_that_fits() -> None:
    auto = make()
    assert auto.sizes == [(320, 180), (640, 360), (1280, 720)]
    assert auto.size == (640, 360)
    Feed(auto).run(2.0, cost_at_vga=200)  # 640x360 ~150 ms, 320x180 ~37 ms: both over, smallest it is
    assert auto.size == (320, 180)
    assert auto.changes == 1  # one jump, not one rung per window


def test_a_momentary_dip_does_not_step_up() -> None:
    auto = make((640, 480))
    feed = Feed(auto)
    feed.run(1.0, cost_at_vga=60)
    assert auto.size == (320, 240)
    # 40 ms at 640x480 (about 10 ms here): the bigger size stays out of budget ...
    feed.run(3.0, cost_at_vga=40)
    # ... and a one-second dip to 5 ms, where it would fit, is too short to step up.
    feed.run(1.0, cost_at_vga=5)
    feed.run(3.0, cost_at_vga=40)
    assert auto.size == (320, 240) and auto.changes == 1
    assert (640, 480) not in feed.sizes[30:]


def test_steps_up_after_sustained_headroom_one_rung_at_a_time() -> None:
    auto = make()
    feed = Feed(auto)
    feed.run(1.0, cost_at_vga=200)
    assert auto.size == (320, 180)
    feed.run(2.0, cost_at_vga=5)  # 1280x720 would now cost ~15 ms: fits with margin, but not yet 2.5 s
    assert auto.size == (320, 180)
    feed.run(1.5, cost_at_vga=5)
    assert auto.size == (640, 360)  # one rung ...
    feed.run(1.5, cost_at_vga=5)
    assert auto.size == (640, 360)  # ... the next only after another sustained period
    feed.run(2.0, cost_at_vga=5)
    assert auto.size == (1280, 720)
    feed.run(10.0, cost_at_vga=5)
    assert auto.size == (1280, 720) and auto.changes == 3


def test_never_above_the_camera_size() -> None:
    auto = make((320, 240))
    assert auto.sizes == [(320, 240)]
    Feed(auto).run(10.0, cost_at_vga=0.5)  # a machine far faster than needed
    assert auto.size == (320, 240)
    small = make((160, 120))
    Feed(small).run(10.0, cost_at_vga=0.5)
    assert small.size == (160, 120)  # every box fits the camera's frame as it is
    # A camera that shrinks mid-stream (the browser lowered its resolution) caps the choice at once.
    auto = make()
    Feed(auto).run(10.0, cost_at_vga=0.5)
    assert auto.size == (1280, 720)
    auto.set_source(640, 480)
    assert auto.size == (640, 480)


@pytest.mark.parametrize("threshold_at", [(640, 360), (1280, 720)])
def test_costs_hovering_around_the_threshold_do_not_flap(threshold_at: tuple[int, int]) -> None:
    auto = make()
    feed = Feed(auto)
    # Warm up at a cost where the size under test fits easily, so the controller climbs to it.
    feed.run(12.0, cost_at_vga=2)
    assert auto.size == (1280, 720)
    # Now the size under test costs within +-8% of the budget, alternating in bursts.
    budget = BUDGET * INTERVAL
    at_vga = budget * VGA / (threshold_at[0] * threshold_at[1])
    pattern = [at_vga * 1.08] * 10 + [at_vga * 0.92] * 10 + [at_vga * 1.03, at_vga * 0.97] * 10
    before = auto.changes
    feed.run(30.0, cost_at_vga=pattern)
    # At most one step down, then it stays: no return to a size that was just left.
    assert auto.changes - before <= 1
    changes = [(a, b) for a, b in itertools.pairwise(feed.sizes[-900:]) if a != b]
    ups = [c for c in changes if c[1][0] > c[0][0]]
    assert ups == [], changes


def test_unknown_frame_rate_assumes_30_fps_and_a_slow_camera_allows_more() -> None:
    auto = make((640, 480))
    Feed(auto).run(2.0, cost_at_vga=30, interval_ms=None)  # 30 ms > 70% of 33 ms
    assert auto.size == (320, 240)
    slow = make((640, 480))
    Feed(slow).run(5.0, cost_at_vga=30, interval_ms=100)  # a 10 fps camera: 70 ms budget
    assert slow.size == (640, 480) and slow.changes == 0


def test_a_lone_stall_does_not_step_down() -> None:
    auto = make((640, 480))
    feed = Feed(auto)
    feed.run(2.0, cost_at_vga=12)
    feed.run(1 / 30, cost_at_vga=800)  # one frame stuck behind a GC pause or a busy core
    feed.run(2.0, cost_at_vga=12)
    assert auto.size == (640, 480) and auto.changes == 0


def test_the_first_measurement_is_ignored_and_in_flight_frames_count_at_their_own_size() -> None:
    auto = make((640, 480))
    assert auto.update(5000.0, INTERVAL, 0.0) == (640, 480)  # a first call's one-off setup
    assert auto.cost_per_px_ms is None
    auto.update(10.0, INTERVAL, 0.1, size=(320, 240))
    assert auto.estimate_ms((640, 480)) == pytest.approx(40.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one box"):
        AutoResolution([], budget=BUDGET)
    with pytest.raises(ValueError, match="budget"):
        AutoResolution(BOXES, budget=1.5)
