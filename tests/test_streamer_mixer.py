"""The style mixer: presets, message validation, smooth transitions (a fake clock steps time exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.mixer import ControlError, Mixer, build_presets

STYLES = ["ember", "glacier", "moss"]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(transition_ms: int = 300) -> tuple[Mixer, Clock]:
    clock = Clock()
    presets = build_presets(STYLES)
    return Mixer(STYLES, presets, ["320x240", "640x480"], "640x480", transition_ms, clock=clock), clock


def test_presets_one_per_style_pairs_and_all() -> None:
    presets = {p.name: p.weights for p in build_presets(STYLES)}
    assert presets["ember"] == (1.0, 0.0, 0.0) and presets["moss"] == (0.0, 0.0, 1.0)
    assert presets["ember + glacier"] == (0.5, 0.5, 0.0)
    assert presets["All styles"] == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert [p.name for p in build_presets(["solo"])] == ["solo"]


def test_weight_change_moves_smoothly_and_lands_exactly() -> None:
    mixer, clock = make(transition_ms=300)
    start = mixer.step().weights
    np.testing.assert_allclose(start, [1, 0, 0])
    mixer.apply({"type": "set", "weights": {"moss": 3}})
    assert mixer.state.weights == (0.0, 0.0, 3.0)  # the ack reports what was asked for
    path = []
    for _ in range(10):  # 30 fps frames across the 300 ms transition
        path.append(mixer.step()[0])
        clock.t += 1 / 30
    path.append(mixer.step()[0])
    moss = [float(w[2]) for w in path]
    assert moss[0] == pytest.approx(0.0) and moss[-1] == pytest.approx(1.0)  # normalised target
    assert all(b >= a for a, b in zip(moss, moss[1:], strict=False))  # monotonic
    steps = np.diff(moss)
    assert steps.max() < 0.2  # no jump: at most a fifth of the way in one frame
    assert all(abs(float(w.sum()) - 1) < 1e-5 for w in path)
    clock.t += 10
    np.testing.assert_allclose(mixer.step()[0], [0, 0, 1])


def test_a_change_mid_transition_starts_from_where_the_mix_is() -> None:
    mixer, clock = make(transition_ms=400)
    mixer.apply({"type": "set", "weights": [0, 1, 0]})
    clock.t += 0.2
    halfway = mixer.step().weights
    assert 0.2 < halfway[1] < 0.8
    mixer.apply({"type": "set", "weights": [0, 0, 1], "strength": 0.5})
    again, strength, _ = mixer.step()
    np.testing.assert_allclose(again, halfway, atol=1e-6)  # continuous, no jump back or forward
    assert strength == pytest.approx(1.0)
    clock.t += 0.4
    w, strength, _ = mixer.step()
    np.testing.assert_allclose(w, [0, 0, 1])
    assert strength == pytest.approx(0.5)


def test_zero_transition_is_immediate_and_is_remembered() -> None:
    mixer, _ = make()
    mixer.apply({"type": "set", "weights": [0, 1, 0], "transition_ms": 0})
    np.testing.assert_allclose(mixer.step()[0], [0, 1, 0])
    state = mixer.apply({"type": "preset", "name": "moss"})
    np.testing.assert_allclose(mixer.step()[0], [0, 0, 1])
    assert state.preset == "moss" and state.weights == (0.0, 0.0, 1.0)
    assert mixer.apply({"type": "set", "strength": 0.2}).preset == "moss"  # strength keeps the preset
    assert mixer.apply({"type": "set", "weights": [1, 1, 0]}).preset is None


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"type": "set", "weights": {"ember": 1}, "strength": -0.1}, "strength must be 0..1"),
        ({"type": "set", "weights": {"ember": float("nan")}}, "must be a finite number within float32's range"),
        # Numbers that overflow float32 (they would make the mix inf, then NaN).
        ({"type": "set", "weights": [1e308, 1e308, 1e308]}, "within float32's range"),
        ({"type": "set", "weights": {"ember": 1e39}}, "within float32's range"),
        ({"type": "set", "weights": [10**400, 0, 0]}, "within float32's range"),
        ({"type": "set", "weights": [3e38, 3e38, 0]}, "add up to a finite float32"),
        ({"type": "set", "transition_ms": -1e308}, "transition_ms"),
        ({"type": "set", "weights": {"ember": True}}, "must be a number"),
        ({"type": "set", "weights": {}}, "at least one style"),
        ({"type": "set", "weights": "ember"}, "list of numbers or an object"),
        ({"type": "set", "resolution": "1280x720"}, "unknown resolution"),
        ({"type": "set", "transition_ms": -1}, "transition_ms must be 0..5000"),
        ({"type": "set", "colour": "red"}, "unknown field(s) colour"),
        ({"type": "preset"}, "unknown preset None"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_messages_change_nothing(msg: object, reason: str) -> None:
    mixer, _ = make()
    before = (mixer.state, mixer.transition_ms, mixer.step())
    with pytest.raises(ControlError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        mixer.apply(msg)
    after = (mixer.state, mixer.transition_ms, mixer.step())
    assert before[:2] == after[:2]
    np.testing.assert_array_equal(before[2][0], after[2][0])


def test_weights_by_index_or_name_and_unnamed_styles_get_zero() -> None:
    mixer, _ = make()
    assert mixer.apply({"type": "set", "weights": {"0": 0.25, "moss": 0.75}}).weights == (0.25, 0.0, 0.75)
    assert mixer.apply({"type": "set", "resolution": "320x240"}).resolution == "320x240"
    assert mixer.resolution == (320, 240)


def test_auto_resolution_is_a_choice_that_leaves_the_box_to_the_session() -> None:
    mixer, _ = make()
    assert not mixer.auto and mixer.resolution == (640, 480)
    state = mixer.apply({"type": "set", "resolution": "auto"})
    assert state.resolution == "auto" and mixer.auto and mixer.resolution is None
    with pytest.raises(ControlError, match="choose one of auto, 320x240, 640x480"):
        mixer.apply({"type": "set", "resolution": "AUTO"})
    assert mixer.apply({"type": "set", "resolution": "320x240"}).resolution == "320x240" and not mixer.auto


def test_a_new_style_joins_at_weight_zero_and_a_transition_goes_on() -> None:
    mixer, clock = make(transition_ms=400)
    mixer.apply({"type": "set", "weights": [0, 1, 0]})
    clock.t += 0.2
    halfway = mixer.step().weights
    styles = [*STYLES, "mine"]
    mixer.restyle(styles, build_presets(styles), [0, 1, 2, -1])
    assert mixer.state.weights == (0.0, 1.0, 0.0, 0.0) and mixer.styles == styles
    now = mixer.step().weights
    np.testing.assert_allclose(now, [*halfway, 0], atol=1e-6)  # no jump at the swap
    clock.t += 1
    np.testing.assert_allclose(mixer.step()[0], [0, 1, 0, 0])
    assert mixer.apply({"type": "set", "weights": {"mine": 1}}).weights == (0, 0, 0, 1)


def test_deleting_the_only_style_in_use_moves_to_the_first_preset() -> None:
    styles = [*STYLES, "mine"]
    mixer = Mixer(styles, build_presets(styles), ["320x240"], "320x240", 0, clock=Clock())
    mixer.apply({"type": "set", "weights": {"mine": 1}})
    mixer.restyle(STYLES, build_presets(STYLES), [0, 1, 2])
    assert mixer.state.weights == (1.0, 0.0, 0.0) and mixer.state.preset == "ember"
    np.testing.assert_allclose(mixer.step()[0], [1, 0, 0])
    with pytest.raises(ControlError, match="mine"):
        mixer.apply({"type": "set", "weights": {"mine": 1}})


def test_stroke_is_validated_applied_at_once_and_acked() -> None:
    mixer, clock = make(transition_ms=300)
    assert mixer.step().stroke == 1.0 and mixer.state.to_json()["stroke"] == 1.0
    state = mixer.apply({"type": "set", "stroke": 1.5})
    assert state.stroke == 1.5 and mixer.step().stroke == 1.5  # no glide: the next frame has it
    for bad, message in [
        (3, "from 0.5 \\(fine\\) to 2 \\(bold\\)"),
        (0.25, "from 0.5"),
        (float("nan"), "from 0.5"),
        ("1.5", "must be a number"),
        (True, "must be a number"),
        (None, "must be a number"),
    ]:
        before = mixer.state
        with pytest.raises(ControlError, match=message):
            mixer.apply({"type": "set", "stroke": bad, "strength": 0.2})
        assert mixer.state == before  # a bad stroke changes nothing, the strength included
