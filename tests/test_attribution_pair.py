"""spade.saliency.AttributionPair: a dense and a SPADE attribution of one image, scored against independent
computations (scikit-learn, SciPy) on tiny models; every registered method; errors. And the one Prediction
type of a loaded model and a trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from spade.augment import AugmentConfig
from spade.errors import ConfigError
from spade.metrics import insertion_deletion
from spade.models import LoadedModel, ModelSpec, PackageWeights
from spade.prediction import Prediction
from spade.preprocessing import Preprocessing
from spade.saliency import METHODS, AttributionPair, attribution_pair
from spade.trace import SpadeTrace, spade_trace
from tests.test_saliency import fast_settings, tiny_trace
from tests.tiny_models import tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = Preprocessing(resize=40, crop=32)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_resnet(0)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).uniform(0, 255, (48, 40, 3)).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def trace(model, image) -> SpadeTrace:
    return spade_trace(model, image, preprocessing=PRE, augment=AugmentConfig(count=8), sparsity=0.6)


def square_mask() -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 10:22] = True
    return mask


def test_scores_equal_an_independent_computation(model, image, trace):
    x = PRE(image)
    target = int(trace.dense_logits.argmax())
    pair = attribution_pair("input_x_gradient", model, trace, x, target)
    assert pair.method == "input_x_gradient" and pair.target == target and pair.shape == (32, 32)
    assert torch.equal(pair.x, x)
    assert torch.equal(pair.dense.raw, METHODS["input_x_gradient"].explain(model, x, target).raw)
    assert torch.equal(pair.spade.raw, METHODS["input_x_gradient"].explain(trace.model, x, target).raw)

    mask = square_mask()
    scores = pair.scores(mask, model=model, steps=10)
    dense, spade = (m.numpy().astype(np.float64) for m in pair.maps("signed"))
    assert scores.rank_correlation == pytest.approx(spearmanr(dense.ravel(), spade.ravel()).statistic)
    assert pair.rank_correlation("absolute") == pytest.approx(
        spearmanr(np.abs(dense).ravel(), np.abs(spade).ravel()).statistic)
    for values, part in ((dense, scores.dense), (spade, scores.spade)):
        auc_signed = roc_auc_score(mask.ravel(), values.ravel())
        auc_absolute = roc_auc_score(mask.ravel(), np.abs(values).ravel())
        assert part.mask.auc.signed == pytest.approx(auc_signed)
        assert part.mask.auc.absolute == pytest.approx(auc_absolute)
        assert part.mask.trojan_auc == pytest.approx(max(auc_signed, auc_absolute))
        assert part.mask.variant == ("signed" if auc_signed >= auc_absolute else "absolute")
        # random maps have one maximal pixel: the pointing game is whether it lies in the mask
        assert part.mask.pointing_signed == bool(mask.ravel()[values.argmax()])
        assert part.mask.pointing_absolute == bool(mask.ravel()[np.abs(values).argmax()])
        assert part.mask.pointing_game == (part.mask.pointing_signed if part.mask.variant == "signed"
                                           else part.mask.pointing_absolute)
        assert part.mask.mass_in_mask == pytest.approx(np.abs(values)[mask].sum() / np.abs(values).sum())
        curves = insertion_deletion(model, x, torch.from_numpy(values), target, steps=10)
        assert part.curves.insertion_auc == curves.insertion_auc
        assert part.curves.deletion_auc == curves.deletion_auc
    both = np.abs(np.concatenate([dense.ravel(), spade.ravel()]))
    assert pair.shared_scale() == pytest.approx(np.percentile(both, 99))

    plain = pair.scores()
    assert plain.dense.mask is None and plain.spade.curves is None
    assert plain.rank_correlation == scores.rank_correlation


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_a_pair_of_the_image_size(name):
    x = torch.randn(3, 32, 24, generator=torch.Generator().manual_seed(1))
    dense, sparse = tiny_resnet(0), tiny_trace(0)
    pair = attribution_pair(name, dense, sparse, x, 1, fast_settings(name))
    assert pair.method == name and pair.target == 1 and pair.shape == (32, 24)
    assert pair.settings == fast_settings(name) == pair.spade.settings
    for values in (*pair.maps("signed"), *pair.maps("absolute")):
        assert values.shape == (32, 24) and values.dtype == torch.float32
    mask = np.zeros((32, 24), dtype=bool)
    mask[4:12, 6:18] = True
    scores = pair.scores(mask)
    for part in (scores.dense, scores.spade):
        assert 0.0 <= part.mask.trojan_auc <= 1.0 and part.curves is None


def test_bad_masks_and_mismatched_attributions_are_config_errors(model):
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    pair = attribution_pair("saliency", model, tiny_trace(0), x, 0)
    with pytest.raises(ConfigError, match="mask"):
        pair.scores(np.ones((16, 16), dtype=bool))
    with pytest.raises(ConfigError, match="mask"):
        pair.scores(torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ConfigError, match="inside"):
        pair.scores(np.ones((32, 32), dtype=bool))
    other = METHODS["saliency"].explain(model, x, 1)
    with pytest.raises(ConfigError, match="one method and class"):
        AttributionPair(x=x, dense=pair.dense, spade=other)
    with pytest.raises(ConfigError, match="one size"):
        AttributionPair(x=x[:, :16], dense=pair.dense, spade=pair.spade)
    with pytest.raises(ConfigError, match="Unknown saliency method"):
        attribution_pair("nope", model, model, x, 0)


def test_a_loaded_model_and_a_trace_predict_with_one_type(model, image, trace):
    spec = ModelSpec(name="tiny", description="tiny", build=lambda: tiny_resnet(0),
                     weights=PackageWeights("no-such-distribution"), preprocessing=PRE, last_conv_stage="layer2",
                     offline=True, class_names=tuple(f"class {i}" for i in range(5)))
    loaded = LoadedModel(model, spec, spec.class_names, torch.device("cpu"))
    named = loaded.predict(image, k=5)
    top5 = trace.dense_top5
    assert all(isinstance(p, Prediction) for p in [*named, *top5, *trace.trace_top5])
    assert [p.index for p in named] == [p.index for p in top5]
    assert [p.probability for p in named] == pytest.approx([p.probability for p in top5])
    assert named[0].name == f"class {named[0].index}" and top5[0].name == ""
    index, name, probability = named[0]
    assert (index, name, probability) == (named[0].index, named[0].name, named[0].probability)
    report = trace.to_dict()["dense_top5"]  # the report's layout is unchanged
    assert report == {"indices": [p.index for p in top5], "probabilities": [round(p.probability, 6) for p in top5]}
