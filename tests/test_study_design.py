"""Study design: the two patches (strongest vs weakest region of the ground-truth map, same size, inside the
image), create_study on a tiny model, and the counterbalanced, reproducible task assignment."""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import numpy as np
import pytest

from spade.errors import ConfigError
from spade.images import bundled_examples, load_image
from spade.preprocessing import Preprocessing
from spade.saliency import METHODS
from spade_study.archive import read_archive, write_archive
from spade_study.assignment import assign_tasks, participant_seed
from spade_study.create import create_study
from spade_study.design import (
    StudyConfig,
    StudyImage,
    VisualizationSettings,
    choose_patches,
    png_to_array,
)
from tests.study_helpers import synthetic_study
from tests.tiny_models import tiny_resnet

PRE = Preprocessing(resize=72, crop=64)
FAST = VisualizationSettings(steps=3, augmentations=8, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- patches
def _brute_force(saliency: np.ndarray, side: int):
    """Independent reference: every window by explicit loops."""
    h, w = saliency.shape
    windows = [((x, y, x + side, y + side), saliency[y:y + side, x:x + side].sum())
               for y in range(h - side + 1) for x in range(w - side + 1)]
    truth, best = max(windows, key=lambda t: t[1])
    truth = next(box for box, s in windows if np.isclose(s, best))  # first in row-major order

    def overlaps(a, b):
        return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])

    apart = [(box, s) for box, s in windows if not overlaps(box, truth)]
    low = min(s for _, s in apart)
    distractor = next(box for box, s in apart if np.isclose(s, low))
    return truth, distractor


def test_patches_on_a_hand_made_map():
    yy, xx = np.mgrid[0:12, 0:12]
    saliency = 0.01 * (xx + yy)
    saliency[5:8, 6:9] = 10.0  # the hot spot
    truth, distractor = choose_patches(saliency, 3)
    assert truth == (6, 5, 9, 8)  # (left, top, right, bottom) around the hot spot
    assert distractor == (0, 0, 3, 3)  # the coldest corner


def test_distractor_never_overlaps_even_when_the_coldest_window_does():
    saliency = np.ones((10, 10))
    saliency[4:7, 4:7] = 100.0
    saliency[6, 6] = -50.0  # inside the hot window: the coldest window (6, 6)..(8, 8) overlaps it
    truth, distractor = choose_patches(saliency, 3)
    assert truth == (4, 4, 7, 7)  # 8 * 100 - 50 = 750
    assert saliency[6:9, 6:9].sum() == -42 == min(saliency[y:y + 3, x:x + 3].sum() for y in range(8) for x in range(8))
    assert distractor == (0, 0, 3, 3)  # the first window of sum 9 that does not overlap the truth
    assert (truth, distractor) == _brute_force(saliency, 3)


@pytest.mark.parametrize("shape,side", [((20, 17), 5), ((9, 9), 3), ((30, 24), 8), ((16, 40), 1)])
def test_patches_match_brute_force_on_random_maps(shape, side):
    rng = np.random.default_rng(sum(shape) + side)
    for _ in range(5):
        saliency = rng.random(shape)
        truth, distractor = choose_patches(saliency, side)
        assert (truth, distractor) == _brute_force(saliency, side)
        for left, top, right, bottom in (truth, distractor):
            assert 0 <= left < right <= shape[1] and 0 <= top < bottom <= shape[0]
            assert (right - left, bottom - top) == (side, side)


def test_patches_that_cannot_fit_are_refused():
    with pytest.raises(ConfigError):
        choose_patches(np.zeros((10, 10)), 11)
    with pytest.raises(ConfigError):
        choose_patches(np.zeros((10, 10)), 6)  # no non-overlapping place for the distractor
    with pytest.raises(ConfigError):
        StudyConfig(patch_fraction=0.4)


# ----------------------------------------------------------------------------------------------- create_study
@functools.cache
def _tiny_study():
    model = tiny_resnet(0, num_classes=3)
    names = ["cat", "coffee", "rocket"]
    images = [StudyImage("cat", load_image(bundled_examples()["cat"])),
              StudyImage("coffee", load_image(bundled_examples()["coffee"]), neuron=2),
              StudyImage("rocket", load_image(bundled_examples()["rocket"]), training=True)]
    stages = []
    config = StudyConfig(training_tasks=1, visualization=FAST, patch_fraction=0.3)
    study = create_study(model, images, config, preprocessing=PRE, class_names=("a", "b", "c"), cam_layer="layer2",
                         model_name="tiny", study_id="tiny", progress=lambda s, f: stages.append((s, f)))
    return model, names, study, stages


def test_create_study_patches_come_from_the_dense_score_cam():
    model, names, study, _ = _tiny_study()
    assert [item.name for item in study.items] == names
    for name, item in zip(names, study.items):
        image = load_image(bundled_examples()[name])
        x = PRE(image)
        predicted = int(model(x.unsqueeze(0)).argmax())
        assert item.neuron == (2 if name == "coffee" else predicted)
        assert item.neuron_name == "abc"[item.neuron]
        # the ground truth, computed here on its own: Score-CAM of the dense model for the item's neuron
        cam = METHODS["score_cam"].explain(model, x, item.neuron, METHODS["score_cam"].settings(layer="layer2"))
        saliency = cam.signed_map.clamp_min(0).double().numpy()
        # Score-CAM of this random model is flat (no channel raises the score) except on the cat
        assert (saliency.max() > 0) == (name == "cat"), "the test needs a non-flat map"
        side = round(0.3 * 64)
        assert (item.truth.box, item.distractor.box) == _brute_force(saliency, side)
        view = item.image_array()
        assert view.shape == (64, 64, 3)
        assert np.array_equal(view, PRE.to_uint8(x))  # participants see what the model saw
        for patch in (item.truth, item.distractor):
            left, top, right, bottom = patch.box
            assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64 and patch.size == (side, side)
            assert np.array_equal(patch.array(), view[top:bottom, left:right])
        if name == "cat":
            assert item.truth.score > item.distractor.score
        assert set(item.visualizations) == {"dense", "spade"}
        for data in item.visualizations.values():
            assert png_to_array(data).shape == (64, 64, 3)
        # a class logit's default trace: the classifier alone (backed off when it must), by the default solver
        assert item.details["trace_sparsity"].startswith("classifier-0.95")
        assert item.details["trace_solver"] == "group"
    assert [item.training for item in study.items] == [False, False, True]
    # the dense visualization depends on the neuron only, and is computed once per neuron
    by_neuron = {}
    for item in study.items:
        by_neuron.setdefault(item.neuron, set()).add(item.visualizations["dense"])
    assert all(len(v) == 1 for v in by_neuron.values())


def test_create_study_solves_the_traces_with_the_given_solver():
    from spade.augment import AugmentConfig
    from spade.featurevis import ClassLogit, FeatureVisConfig, visualization_trace, visualize
    from spade.solver import SolverConfig

    model = tiny_resnet(0, num_classes=3)
    image = load_image(bundled_examples()["cat"])
    row = SolverConfig(mode="row")
    study = create_study(model, [StudyImage("cat", image, neuron=1)], StudyConfig(training_tasks=0, visualization=FAST),
                         preprocessing=PRE, solver=row, study_id="row")
    (item,) = study.items
    assert item.details["trace_solver"] == "row"
    # the SPADE picture, made here on its own: the row-solved trace of the class logit, then the same optimisation
    def picture(solver: SolverConfig) -> np.ndarray:
        trace = visualization_trace(model, image, preprocessing=PRE, augment=AugmentConfig(count=8, seed=0),
                                    solver=solver, keep_decision=True, objective=ClassLogit(1))
        return visualize(trace.model, ClassLogit(1), preprocessing=PRE,
                         config=FeatureVisConfig(steps=3, seed=0, parameterization=FAST.method)).image_uint8(0)

    made = png_to_array(item.visualizations["spade"])
    assert np.array_equal(made, picture(row))
    assert not np.array_equal(made, picture(SolverConfig(mode="group")))  # so the solver really reached the trace


def test_create_study_reports_progress_and_is_reproducible():
    model, _, study, stages = _tiny_study()
    overall = [f for s, f in stages if s == "study"]
    assert overall[0] == 0.0 and overall[-1] == 1.0 and overall == sorted(overall)
    assert {s.split(": ")[1] for s, _ in stages if s != "study"} >= {"score_cam", "statistics", "solve",
                                                                     "dense visualization", "SPADE visualization"}
    again = create_study(model, [StudyImage("cat", load_image(bundled_examples()["cat"]))],
                         StudyConfig(training_tasks=0, visualization=FAST), preprocessing=PRE, cam_layer="layer2")
    first = study.items[0]
    assert again.items[0].visualizations == first.visualizations
    assert (again.items[0].truth.box, again.items[0].distractor.box) == (first.truth.box, first.distractor.box)
    # one condition only: only its visualization is computed
    dense_only = create_study(model, [StudyImage("cat", load_image(bundled_examples()["cat"]))],
                              StudyConfig(conditions=("dense",), training_tasks=0, visualization=FAST),
                              preprocessing=PRE, cam_layer="layer2")
    assert set(dense_only.items[0].visualizations) == {"dense"}


def test_gradcam_stays_an_option_for_the_ground_truth():
    model = tiny_resnet(0, num_classes=3)
    image = load_image(bundled_examples()["coffee"])
    study = create_study(model, [StudyImage("coffee", image)],
                         StudyConfig(training_tasks=0, ground_truth="gradcam", conditions=("dense",),
                                     visualization=FAST), preprocessing=PRE, cam_layer="layer2")
    item = study.items[0]
    cam = METHODS["gradcam"].explain(model, PRE(image), item.neuron, METHODS["gradcam"].settings(layer="layer2"))
    saliency = cam.signed_map.clamp_min(0).double().numpy()
    assert (item.truth.box, item.distractor.box) == _brute_force(saliency, round(0.3 * 64))
    assert StudyConfig().ground_truth == "score_cam"


@pytest.mark.parametrize("method", ["fourier", "maco"])
def test_study_visualizations_use_the_chosen_method(method):
    from spade.featurevis import ClassLogit, FeatureVisConfig, visualize

    model = tiny_resnet(0, num_classes=3)
    image = load_image(bundled_examples()["cat"])
    vis = VisualizationSettings(steps=3, augmentations=8, seed=0, method=method)
    study = create_study(model, [StudyImage("cat", image)],
                         StudyConfig(training_tasks=0, conditions=("dense",), visualization=vis),
                         preprocessing=PRE, cam_layer="layer2")
    item = study.items[0]
    expected = visualize(model, ClassLogit(item.neuron), preprocessing=PRE,
                         config=FeatureVisConfig(steps=3, seed=0, parameterization=method))
    assert np.array_equal(png_to_array(item.visualizations["dense"]), expected.image_uint8(0))


def test_visualization_method_is_validated_and_old_studies_keep_theirs():
    from spade.featurevis import DEFAULT_METHOD

    assert VisualizationSettings().method == DEFAULT_METHOD
    with pytest.raises(ConfigError, match="visualization method"):
        VisualizationSettings(method="pixels")
    # a study stored before the method was recorded was made with the Lucid-style method
    old = StudyConfig(visualization=VisualizationSettings(method="maco")).to_dict()
    del old["visualization"]["method"]
    assert StudyConfig.from_dict(old).visualization.method == "fourier"


def test_create_study_refuses_unusable_choices():
    model = tiny_resnet(0, num_classes=3)
    cat = load_image(bundled_examples()["cat"])
    kwargs = dict(preprocessing=PRE, cam_layer="layer2")
    with pytest.raises(ConfigError, match="training image"):
        create_study(model, [StudyImage("cat", cat)], StudyConfig(training_tasks=2, visualization=FAST), **kwargs)
    with pytest.raises(ConfigError, match="real tasks"):
        create_study(model, [StudyImage("cat", cat, training=True)], StudyConfig(visualization=FAST), **kwargs)
    with pytest.raises(ConfigError, match="class 7"):
        create_study(model, [StudyImage("cat", cat, neuron=7)], StudyConfig(training_tasks=0, visualization=FAST),
                     **kwargs)


def test_archive_round_trip_of_a_computed_study():
    _, _, study, _ = _tiny_study()
    data = write_archive(study)
    back = read_archive(data).study
    assert write_archive(back) == data
    assert back.config == study.config and back.id == study.id and back.created == study.created
    assert [i.visualizations for i in back.items] == [i.visualizations for i in study.items]


def test_config_round_trips_and_validates():
    config = StudyConfig(title="T", conditions=("spade", "dense"), tasks_per_participant=3, training_tasks=1,
                         seed=5, visualization=VisualizationSettings(steps=10, sparsity=0.5))
    assert StudyConfig.from_dict(config.to_dict()) == config
    for bad in (dict(conditions=()), dict(conditions=("dense", "dense")), dict(conditions=("other",)),
                dict(tasks_per_participant=0), dict(training_tasks=-1), dict(title=" ")):
        with pytest.raises(ConfigError):
            StudyConfig(**bad)
    with pytest.raises(ConfigError):
        VisualizationSettings(sparsity=1.0)


# ----------------------------------------------------------------------------------------------- assignment
def _real(tasks):
    return [t for t in tasks if not t.training]


def test_assignment_is_reproducible_from_the_seed():
    study = synthetic_study(n_real=8, n_training=2)
    for number in range(4):
        seed = participant_seed(study.config.seed, number)
        assert assign_tasks(study, number) == assign_tasks(study, number, seed)
        assert assign_tasks(synthetic_study(n_real=8, n_training=2), number) == assign_tasks(study, number)
    assert participant_seed(0, 1) != participant_seed(0, 2) != participant_seed(1, 2)
    orders = {tuple(t.item for t in assign_tasks(study, 0, seed)) for seed in range(10)}
    assert len(orders) > 5, "the participant seed shuffles the order"


@pytest.mark.parametrize("n_real,k,conditions", [(8, None, ("dense", "spade")), (7, None, ("dense", "spade")),
                                                 (9, 4, ("dense", "spade")), (6, 3, ("spade",))])
def test_assignment_is_balanced(n_real, k, conditions):
    config = StudyConfig(conditions=conditions, tasks_per_participant=k, training_tasks=3)
    study = synthetic_study(n_real=n_real, n_training=2, config=config)
    n_cond = len(conditions)
    k = study.tasks_per_participant
    participants = [assign_tasks(study, n) for n in range(4 * n_cond)]
    for tasks in participants:
        assert [t.index for t in tasks] == list(range(3 + k))
        assert all(t.training for t in tasks[:3]) and not any(t.training for t in tasks[3:])
        assert {t.item for t in tasks[:3]} <= set(study.training_items)
        real = _real(tasks)
        assert len({t.item for t in real}) == k, "each image at most once per participant"
        assert {t.item for t in real} <= set(study.real_items)
        by_condition = Counter(t.condition for t in real)
        assert max(by_condition.values()) - min(by_condition.values()) <= 1 and len(by_condition) == min(n_cond, k)
        sides = Counter(t.truth_label for t in real)
        assert abs(sides["A"] - sides["B"]) <= 1
        for condition in conditions:  # the side does not depend on the condition
            per = Counter(t.truth_label for t in real if t.condition == condition)
            assert abs(per["A"] - per["B"]) <= 1
    # every block of n_cond consecutive participants: the same images, each once under every condition
    for block in range(4):
        members = participants[block * n_cond:(block + 1) * n_cond]
        seen = Counter((t.item, t.condition) for tasks in members for t in _real(tasks))
        items = {t.item for t in _real(members[0])}
        assert seen == Counter({(i, c): 1 for i in items for c in conditions})
    # over all participants every image is used equally often (k * participants / images each, when integral)
    uses = Counter(t.item for tasks in participants for t in _real(tasks))
    if (k * len(participants)) % n_real == 0:
        assert set(uses.values()) == {k * len(participants) // n_real}


def test_each_image_and_condition_gets_both_sides_across_two_blocks():
    study = synthetic_study(n_real=6, n_training=0, config=StudyConfig(training_tasks=0))
    sides = Counter((t.item, t.condition, t.truth_label) for n in range(4) for t in assign_tasks(study, n))
    assert sides == Counter({(i, c, s): 1 for i, c, s in itertools.product(range(6), ("dense", "spade"), "AB")})


def test_condition_order_differs_between_participants():
    study = synthetic_study(n_real=8, n_training=0, config=StudyConfig(training_tasks=0))
    sequences = {tuple(t.condition for t in assign_tasks(study, n)) for n in range(12)}
    assert len(sequences) > 6
