"""Synthetic scenes: boxes tight on visible car pixels, the 30% occlusion rule, determinism, COCO output, video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

import detector.data.synthetic as synthetic
from detector.boxes import xyxy_to_xywh
from detector.data.synthetic import (
    Camera,
    Sprite,
    compose_scene,
    driver_car,
    iter_scenes,
    render_scene,
    render_video,
    topdown_car,
    write_coco_dataset,
)
from detector.data.synthetic_traffic import StopAndGo
from detector.structures import DetectorError

GREEN = (0, 255, 0)  # no car part is ever pure green, so every changed pixel belongs to the car
CAMERA = Camera(f=300.0, cx=160.0, horizon=120.0, height=1.5)


def plain(height: int = 200, width: int = 320) -> np.ndarray:
    return np.full((height, width, 3), GREEN, np.uint8)


def mask_extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def changed_extent(image: np.ndarray, background: np.ndarray) -> list[float]:
    """xyxy box (x2 = last column + 1) of the pixels that differ from the background."""
    return mask_extent(np.any(image != background, axis=2))


def wall(x1: float, y1: float, x2: float, y2: float) -> Sprite:
    """A grey occluder in front of every car, covering pixel columns x1..x2 and rows y1..y2."""
    return Sprite.build([(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float), (128, 128, 128))], depth=-5.0)


def red_car(x: float, y: float = 80.0, car_id: int = 7) -> Sprite:
    """A sedan 60 px long facing +x: body x-30..x+30, mirrors reach y +-15.3, so its box is ~[x-30, y-15, x+31, y+16]."""
    return topdown_car((x, y), 60.0, 0.0, (200, 30, 30), "sedan", car_id)


def test_topdown_box_is_tight_on_car_pixels() -> None:
    background = plain()
    render = compose_scene(background, [red_car(100)], shadow_strength=0)
    assert render.boxes.tolist() == [changed_extent(render.image, background)]
    # hand-computed: 60 px long centred at x=100 covers columns 70..130; mirrors reach 80 +- 15.3 -> rows 65..95
    np.testing.assert_allclose(render.boxes[0], [70, 65, 131, 96], atol=1)
    assert render.track_ids.tolist() == [7]
    assert render.ignore.shape == (0, 4)


def test_driver_box_is_tight_on_car_pixels() -> None:
    background = plain(240, 320)
    car = driver_car(CAMERA, x=2.5, z=10.0, colour=(30, 60, 170))
    render = compose_scene(background, [car], shadow_strength=0)
    assert render.boxes.tolist() == [changed_extent(render.image, background)]
    # rear face 1.8 m wide at 10 m: u = 160 + 30 * (2.5 +- 0.9) = 208..262 (right edge), bottom v = 120 + 30 * 1.5
    # = 165; the left flank recedes to z = 14.6 m: u = 160 + 300 * 1.6 / 14.6 = 192.9; the roof top is v ~ 121.2
    np.testing.assert_allclose(render.boxes[0], [192.9, 121.2, 262.0, 165.0], atol=1.5)


def test_half_hidden_car_is_boxed_by_its_visible_part() -> None:
    render = compose_scene(plain(), [red_car(100), wall(0, 0, 99, 199)], shadow_strength=0)
    full = compose_scene(plain(), [red_car(100)], shadow_strength=0).boxes[0]
    # columns 70..99 are hidden, so the box starts at column 100; the mirrors (x 110..112) keep the full height
    assert render.boxes.tolist() == [[100.0, full[1], full[2], full[3]]]
    assert render.ignore.shape == (0, 4)


def test_mostly_hidden_car_becomes_an_ignore_region() -> None:
    full = compose_scene(plain(), [red_car(100)], shadow_strength=0).boxes
    render = compose_scene(plain(), [red_car(100), wall(0, 0, 119, 199)], shadow_strength=0)  # 11 of 61 columns show
    assert render.boxes.shape == (0, 4)
    assert render.ignore.tolist() == full.tolist()
    hidden = compose_scene(plain(), [red_car(100), wall(0, 0, 319, 199)], shadow_strength=0)
    assert hidden.boxes.shape == (0, 4) and hidden.ignore.shape == (0, 4)  # not in the image at all


@pytest.mark.parametrize("x, expected_box, expected_ignore", [
    (10.0, [[0, 65, 41, 96]], []),  # columns -20..40: two thirds inside the image
    (-20.0, [], [[0, 65, 11, 96]]),  # columns -50..10: the front bumper only, ignore clipped to the image
])
def test_image_border_counts_as_hiding(x: float, expected_box: list, expected_ignore: list) -> None:
    render = compose_scene(plain(), [red_car(x)], shadow_strength=0)
    np.testing.assert_allclose(render.boxes.reshape(-1, 4), np.reshape(expected_box, (-1, 4)), atol=1)
    np.testing.assert_allclose(render.ignore.reshape(-1, 4), np.reshape(expected_ignore, (-1, 4)), atol=1)


def car_pixels(car: Sprite) -> np.ndarray:
    """(H, W) bool: the pixels a car changes when drawn alone on the plain background."""
    return np.any(compose_scene(plain(240), [car], shadow_strength=0).image != plain(240), axis=2)


@pytest.mark.parametrize("far_x, outcome", [(0.0, "gone"), (1.4, "ignore"), (2.2, "box")])
def test_near_car_hides_the_car_behind_it(far_x: float, outcome: str) -> None:
    near = driver_car(CAMERA, 0.0, 8.0, (200, 200, 200), car_id=1)
    far = driver_car(CAMERA, far_x, 20.0, (30, 30, 30), car_id=2)
    render = compose_scene(plain(240), [far, near], shadow_strength=0)  # depth, not list order, decides
    boxes = dict(zip(render.track_ids.tolist(), render.boxes.tolist()))
    assert boxes[1] == mask_extent(car_pixels(near))
    # the far car's visible pixels, from the two cars drawn separately: about 0%, 24% and 63% of it
    visible = car_pixels(far) & ~car_pixels(near)
    if outcome == "gone":
        assert visible.sum() == 0 and len(boxes) == 1 and len(render.ignore) == 0
    elif outcome == "ignore":
        assert 0 < visible.sum() < 0.3 * car_pixels(far).sum() and len(boxes) == 1
        assert render.ignore.tolist() == [mask_extent(car_pixels(far))]
    else:
        assert visible.sum() > 0.3 * car_pixels(far).sum() and len(render.ignore) == 0
        assert boxes[2] == mask_extent(visible)


@pytest.mark.parametrize("view", ["topdown", "driver"])
def test_scenes_are_deterministic(view: str) -> None:
    first, again = (render_scene(np.random.default_rng(5), (160, 200), view) for _ in range(2))
    other = render_scene(np.random.default_rng(6), (160, 200), view)
    assert first.image.shape == (160, 200, 3) and first.image.dtype == np.uint8
    assert np.array_equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.image, other.image)
    assert first.boxes.dtype == np.float32 and first.ignore.dtype == np.float32


def test_a_scene_does_not_depend_on_how_many_precede_it() -> None:
    short, long = list(iter_scenes(3, (96, 96), seed=2)), list(iter_scenes(5, (96, 96), seed=2))
    assert np.array_equal(short[2].image, long[2].image)


def test_unknown_view_is_a_clear_error() -> None:
    with pytest.raises(DetectorError, match="topdown, driver"):
        render_scene(np.random.default_rng(0), view="aerial")


def heights(renders) -> np.ndarray:
    return np.concatenate([r.boxes[:, 3] - r.boxes[:, 1] for r in renders])


def test_far_cars_put_a_share_of_the_driver_view_cars_far_down_the_road() -> None:
    near = list(iter_scenes(40, (320, 320), seed=7, views=("driver",)))
    far = list(iter_scenes(40, (320, 320), seed=7, views=("driver",), far_cars=0.5))
    # Without the option hardly a still car is under 16 px tall; with half of them far, about a third are (the far
    # range holds cars about 5..16 px tall at this zoom, and some of those fall under the 4 px rule and leave).
    assert np.mean(heights(near) < 16) < 0.05 < 0.25 < np.mean(heights(far) < 16)
    assert heights(far).min() >= synthetic.MIN_BOX_SIDE
    # The option draws nothing when off, and the top-down view has no far range: its scenes stay the seed's.
    for view in ("topdown", "driver"):
        off = render_scene(np.random.default_rng(3), (160, 200), view)
        zero = render_scene(np.random.default_rng(3), (160, 200), view, far_cars=0.0)
        assert np.array_equal(off.image, zero.image)
    top, top_far = (render_scene(np.random.default_rng(3), (160, 200), "topdown", far_cars=f) for f in (0.0, 1.0))
    assert np.array_equal(top.image, top_far.image) and np.array_equal(top.boxes, top_far.boxes)


def test_far_cars_outside_zero_to_one_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DetectorError, match="far_cars must be a share between 0 and 1, got 1.5"):
        render_scene(np.random.default_rng(0), view="driver", far_cars=1.5)
    with pytest.raises(DetectorError, match="far_cars must be a share between 0 and 1, got -0.1"):
        write_coco_dataset(tmp_path / "data", 2, size=(64, 64), far_cars=-0.1)
    assert not (tmp_path / "data").exists()


def test_a_dataset_rendered_without_far_cars_is_not_taken_for_one_with_them(tmp_path) -> None:
    write_coco_dataset(tmp_path / "data", 2, size=(64, 64), seed=0)
    with pytest.raises(DetectorError, match="not a synthetic dataset with these parameters"):
        write_coco_dataset(tmp_path / "data", 2, size=(64, 64), seed=0, far_cars=0.5)
    write_coco_dataset(tmp_path / "far", 2, size=(64, 64), seed=0, far_cars=0.5)
    assert json.loads((tmp_path / "far" / "synthetic.json").read_text())["far_cars"] == 0.5


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory: pytest.TempPathFactory):
    out_dir = tmp_path_factory.mktemp("synthetic") / "coco"
    return out_dir, write_coco_dataset(out_dir, 50, seed=3)


def test_coco_file_loads_with_the_rendered_counts(coco_dir) -> None:
    out_dir, annotation_path = coco_dir
    coco = COCO(str(annotation_path))
    renders = list(iter_scenes(50, seed=3))
    assert len(coco.getImgIds()) == 50
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "car", "supercategory": "vehicle"}]
    assert len(coco.getAnnIds(iscrowd=False)) == sum(len(r.boxes) for r in renders)
    assert len(coco.getAnnIds(iscrowd=True)) == sum(len(r.ignore) for r in renders)
    first = coco.loadImgs(1)[0]
    assert (out_dir / first["file_name"]).is_file() and (first["width"], first["height"]) == (320, 320)
    image = cv2.imread(str(out_dir / first["file_name"]))
    assert image.shape == (320, 320, 3)
    xywh = [coco.loadAnns(ann)[0]["bbox"] for ann in coco.getAnnIds(imgIds=1, iscrowd=False)]
    assert np.allclose(np.reshape(xywh, (-1, 4)), xyxy_to_xywh(renders[0].boxes))


def test_fifty_images_hold_negatives_and_learnable_boxes(coco_dir) -> None:
    coco = COCO(str(coco_dir[1]))
    boxes_per_image = [len(coco.getAnnIds(imgIds=i, iscrowd=False)) for i in coco.getImgIds()]
    assert 0 in boxes_per_image and max(boxes_per_image) <= 8 and sum(boxes_per_image) > 50
    xywh = np.array([ann["bbox"] for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False))])
    assert xywh[:, 2:].min() >= 4 and (xywh[:, :2] >= 0).all() and (xywh[:, :2] + xywh[:, 2:] <= 320).all()
    longest = xywh[:, 2:].max(1)
    assert 16 <= np.median(longest) <= 120 and np.mean((longest >= 12) & (longest <= 130)) > 0.95


def test_same_seed_gives_byte_identical_annotations(tmp_path) -> None:
    runs = (("a", 1), ("b", 1), ("c", 2))
    paths = [write_coco_dataset(tmp_path / name, 4, size=(96, 128), seed=seed) for name, seed in runs]
    texts = [path.read_bytes() for path in paths]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_existing_dataset_is_reused_and_a_foreign_folder_refused(tmp_path, monkeypatch) -> None:
    path = write_coco_dataset(tmp_path / "data", 2, size=(64, 64), seed=0)
    monkeypatch.setattr(synthetic, "iter_scenes", lambda *args, **kwargs: pytest.fail("re-rendered"))
    assert write_coco_dataset(tmp_path / "data", 2, size=(64, 64), seed=0) == path
    with pytest.raises(DetectorError, match="data"):
        write_coco_dataset(tmp_path / "data", 3, size=(64, 64), seed=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DetectorError, match="mine"):
        write_coco_dataset(tmp_path / "mine", 2, size=(64, 64))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("view", ["topdown", "driver"])
@pytest.mark.parametrize("traffic", [False, True])
def test_video_reads_back_with_smooth_tracks(tmp_path, view: str, traffic: bool) -> None:
    path = render_video(tmp_path / "clip.mp4", num_frames=15, size=(120, 160), fps=10, seed=1, view=view,
                        stop_and_go=traffic, occlusions=traffic)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 15 and frames[0].shape == (120, 160, 3)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["num_frames"] == 15 and len(sidecar["frames"]) == 15
    centres = {}  # track id -> list of (frame, centre)
    for frame in sidecar["frames"]:
        assert len(set(frame["track_ids"])) == len(frame["track_ids"]) == len(frame["boxes"])
        for box, track in zip(frame["boxes"], frame["track_ids"]):
            centres.setdefault(track, []).append((frame["index"], np.add(box[:2], box[2:]) / 2))
    steps = [np.linalg.norm(b - a) for track in centres.values()
             for (i, a), (j, b) in zip(track, track[1:]) if j == i + 1]  # between consecutive frames
    assert steps and max(steps) < 40  # cars glide: no teleporting identities
    assert np.mean(steps) > 0.3  # and they do move


def test_traffic_options_leave_the_seed_scene_as_it_was() -> None:
    """The options draw after the scene is laid out: the same seed gives the same background and, before the stop,
    the same cars in the same places (the occlusion only adds its two cars and may take some of one lane away)."""
    plain, busy = (synthetic._world(np.random.default_rng(4), (120, 160), "driver", 6.0, stop_and_go=on,
                                     occlusions=on) for on in (False, True))
    assert np.array_equal(plain.background, busy.background)
    def where(world) -> set:  # each car's id, lane, place and speed
        return {(car["id"], car["lane"], car["x"], car["z"], car["velocity"]) for car in world.cars}

    added = {busy.occlusion["car_id"], busy.occlusion["occluder_id"]}
    kept = {car for car in where(busy) if car[0] not in added}
    assert kept and kept <= where(plain) and {car[0] for car in where(busy)} >= added
    assert busy.traffic()["stop_and_go"]["start"] > busy.occlusion["time"]  # the van passes before the stop
    assert plain.traffic() == {"stop_and_go": None, "occlusion": None}


def test_stop_and_go_profile_by_hand() -> None:
    """Full speed until 1 s, slowing over 2 s (half speed at 2 s), standing 3 s, starting over 2 s (half at 7 s).
    Distance in seconds of full speed: 1 + 2 / 2 = 2 at the standstill; at 10 s, 10 - 2 / 2 - 3 - 2 / 2 = 5."""
    jam = StopAndGo(start=1.0, slow=2.0, wait=3.0, go=2.0)
    assert [jam.factor(t) for t in (0.5, 2.0, 4.5, 7.0, 9.0)] == pytest.approx([1, 0.5, 0, 0.5, 1])
    assert [jam.distance(t) for t in (0.5, 3.0, 6.0, 10.0)] == pytest.approx([0.5, 2.0, 2.0, 5.0])
    times = np.linspace(0, 10, 2001)
    midpoints = [jam.factor(t) for t in (times[1:] + times[:-1]) / 2]
    numeric = np.concatenate([[0], np.cumsum(np.diff(times) * midpoints)])  # the integral of the speed, numerically
    assert np.abs(np.array([jam.distance(t) for t in times]) - numeric).max() < 1e-4


@pytest.mark.parametrize("view", ["driver", "topdown"])
def test_a_stop_and_go_car_stops_and_drives_off_smoothly(view: str) -> None:
    """The driver's view: the ego and a car ahead in its direction stop together, so the car's speed along the road
    is measured from where the ego started; top-down: a car of the lane that stops."""
    world = synthetic._world(np.random.default_rng(2), (120, 160), view, 30.0, stop_and_go=True)
    car = next(c for c in world.cars if c["id"] in world.traffic()["stop_and_go"]["car_ids"])
    step, times = 0.05, np.arange(0, 30, 0.05)
    if view == "driver":
        position = np.array([world._distance(car, t) + world.travelled(t) for t in times])  # metres
    else:
        position = np.array([world._along(car, t) for t in times])  # pixels along the road
    speed = np.abs(np.diff(position)) / step
    cruising, jam = speed[0], world.jam
    assert cruising > 1 and speed[-1] == pytest.approx(cruising, rel=1e-6)  # back to its speed
    standing = (times[:-1] > jam.start + jam.slow + step) & (times[1:] < jam.start + jam.slow + jam.wait)
    assert standing.sum() > 20 and speed[standing].max() < 1e-6 * cruising  # a standstill of over a second
    assert np.abs(np.diff(speed)).max() < 0.1 * cruising  # no jumps in speed: it brakes and starts smoothly


def test_the_parked_car_hidden_by_the_van_keeps_its_id(tmp_path) -> None:
    """The driver's view with occlusions: the van hides the parked car fully when the two line up; the ground truth
    has the parked car's box before and after, under the same id, and nothing for it while hidden (a car under 30%
    visible is an ignore region, with no id)."""
    path = render_video(tmp_path / "clip.mp4", num_frames=60, size=(240, 320), seed=1, view="driver",
                        stop_and_go=True, occlusions=True)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    occlusion, frames = sidecar["traffic"]["occlusion"], sidecar["frames"]
    car, lined_up = occlusion["car_id"], round(occlusion["time"] * sidecar["fps"])
    seen = [frame["index"] for frame in frames if car in frame["track_ids"]]
    assert car not in frames[lined_up]["track_ids"] and occlusion["occluder_id"] in frames[lined_up]["track_ids"]
    before, after = [i for i in seen if i < lined_up], [i for i in seen if i > lined_up]
    assert len(before) >= 3 and len(after) >= 3  # seen, hidden, seen again: the same id
    assert any(frame["ignore"] for frame in frames[before[-1] + 1:after[0]])  # partly hidden on the way


def test_cars_passing_under_the_bridge_keep_their_ids(tmp_path) -> None:
    """Top-down with occlusions: a car vanishes under the bridge for a few frames and comes out under the same id."""
    path = render_video(tmp_path / "clip.mp4", num_frames=40, size=(160, 240), seed=1, view="topdown",
                        occlusions=True)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    world = synthetic._world(np.random.default_rng(1), (160, 240), "topdown", 4.0, occlusions=True)
    bridge = sidecar["traffic"]["occlusion"]
    assert bridge == world.occlusion
    gaps = []
    for car in world.cars:
        seen = [frame["index"] for frame in sidecar["frames"] if car["id"] in frame["track_ids"]]
        gaps += [(car, a, b) for a, b in zip(seen, seen[1:]) if b > a + 2]
    assert gaps
    for car, last, back in gaps:  # hidden in between, by the bridge: its middle passed under the deck
        along = [world._along(car, index / sidecar["fps"]) for index in range(last + 1, back)]
        assert min(abs(s - bridge["bridge_s"]) for s in along) < bridge["bridge_width"] / 2


def test_video_rejects_a_non_mp4_path(tmp_path) -> None:
    with pytest.raises(DetectorError, match=r"\.mp4"):
        render_video(tmp_path / "clip.avi", num_frames=2)
