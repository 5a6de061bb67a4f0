"""spade.saliency.takeaway: the numbers of a dense-vs-SPADE takeaway checked against a computation by hand (numpy
on small arrays), the regions named, the sentence's parts, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spade.errors import ConfigError
from spade.prediction import Prediction
from spade.saliency import AttributionPair, compare_maps
from spade.saliency.base import Attribution

CAT = Prediction(282, "tiger cat", 0.62)
TABBY = Prediction(281, "tabby", 0.4)


def _top_by_hand(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest values' pixels, ties to the earlier pixel in row-major order (the documented rule), by a
    lexicographic sort on (-value, pixel number)."""
    flat = values.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    top = np.zeros(flat.size, bool)
    top[order[:k]] = True
    return top.reshape(values.shape)


def _by_hand(dense: np.ndarray, sparse: np.ndarray, share: float, mask: np.ndarray | None = None):
    """moved, overlap and the mask shares, written out pixel by pixel."""
    d, s = np.abs(dense).astype(np.float64), np.abs(sparse).astype(np.float64)
    k = max(1, round(share * d.size))
    d_top, s_top = _top_by_hand(d, k), _top_by_hand(s, k)
    assert d_top.sum() == k and s_top.sum() == k
    moved = sum(s[i, j] for i, j in zip(*np.nonzero(s_top)) if not d_top[i, j]) / s[s_top].sum()
    overlap = (d_top & s_top).sum() / k
    shares = None
    if mask is not None:
        shares = (d[d_top & mask].sum() / d[d_top].sum(), s[s_top & mask].sum() / s[s_top].sum())
    return moved, overlap, shares


def test_numbers_equal_a_computation_by_hand():
    rng = np.random.default_rng(3)
    dense = rng.normal(size=(6, 9))
    sparse = dense + rng.normal(scale=0.8, size=(6, 9))
    mask = np.zeros((6, 9), bool)
    mask[1:4, 2:6] = True
    for share in (0.1, 0.25, 0.5):
        moved, overlap, (mask_dense, mask_spade) = _by_hand(dense, sparse, share, mask)
        result = compare_maps(torch.from_numpy(dense), sparse, mask, top_share=share)
        assert result.moved == pytest.approx(moved) and result.overlap == pytest.approx(overlap)
        assert result.mask_dense == pytest.approx(mask_dense) and result.mask_spade == pytest.approx(mask_spade)
        assert 0 < result.moved < 1 and result.number == result.mask_spade
    from scipy.stats import spearmanr

    assert compare_maps(dense, sparse).rank_correlation == pytest.approx(
        spearmanr(np.abs(dense).ravel(), np.abs(sparse).ravel()).statistic)


def test_mass_moved_from_one_corner_to_another_is_named():
    # 10 x 10: the thirds are rows / columns 0-3, 4-6, 7-9; each top region is exactly 10 pixels
    dense = np.full((10, 10), 0.01)
    dense[0:2, 0:4] = dense[2, 0:2] = 5.0  # dense's strongest tenth: in the top left
    sparse = np.full((10, 10), 0.01)
    sparse[7:9, 0:4] = sparse[9, 0:2] = 3.0  # SPADE's: in the bottom left
    result = compare_maps(dense, sparse, dense_top1=CAT, trace_top1=CAT)
    assert result.moved == 1.0 and result.overlap == 0.0  # no SPADE top pixel lies in dense's top region
    assert (result.gained, result.lost) == ("bottom left", "top left")
    assert result.kept_decision and not result.nearly_same
    assert result.sentence() == ("SPADE moved 100 % of the top-10 % saliency mass, mostly from the top left to the "
                                 "bottom left; the trace kept the decision (tiger cat, 62 %).")
    # half of SPADE's top pixels back in dense's region: half its top mass (3.0 each) moved
    sparse[0:1, 0:4] = sparse[1, 0] = 3.0
    sparse[8, 0:4] = sparse[9, 0] = 0.0
    assert compare_maps(dense, sparse).moved == pytest.approx(0.5)


def test_a_side_ninth_is_named_apart_from_its_corner():
    dense = np.full((10, 10), 0.01)
    dense[4:6, 6:10] = dense[6, 8:10] = 5.0  # dense's strongest tenth: on the right, halfway down
    sparse = np.full((10, 10), 0.01)
    sparse[7:9, 6:10] = sparse[9, 8:10] = 3.0  # SPADE's: in the bottom right corner
    result = compare_maps(dense, sparse)
    assert (result.gained, result.lost) == ("bottom right", "centre right")
    assert "mostly from the centre right to the bottom right" in result.sentence()


def test_nearly_the_same_maps_say_so_and_why():
    rng = np.random.default_rng(0)
    dense = rng.uniform(size=(10, 10))
    result = compare_maps(dense, dense * 0.2, dense_top1=CAT, trace_top1=CAT)  # same shape, five times weaker
    assert result.moved == 0.0 and result.overlap == 1.0 and result.nearly_same
    assert result.rank_correlation == pytest.approx(1.0)
    assert result.strength == pytest.approx(0.2)
    assert result.sentence("the sparsity was backed off to 0.40") == (
        "Dense and SPADE maps are nearly the same: SPADE moved only 0 % of the top-10 % saliency mass (the sparsity "
        "was backed off to 0.40); the SPADE map is weaker overall (0.2 × the dense map's top mass), so it looks "
        "darker on the shared colour scale; the trace kept the decision (tiger cat, 62 %).")
    assert "weaker" not in compare_maps(dense, dense * 0.8).sentence()
    # the reason is only given when the maps are nearly the same
    far = compare_maps(dense, rng.uniform(size=(10, 10)))
    assert not far.nearly_same and "backed off" not in far.sentence("the sparsity was backed off to 0.40")


def test_trigger_sentence_and_a_changed_decision():
    dense = np.full((10, 10), 0.1)
    dense[0:2, 5:10] = 1.0  # dense's strongest tenth: the top right
    sparse = np.full((10, 10), 0.1)
    sparse[6:8, 0:5] = 1.0  # SPADE's: on the trigger
    mask = np.zeros((10, 10), bool)
    mask[6:9, 0:5] = True
    result = compare_maps(dense, sparse, mask, dense_top1=CAT, trace_top1=TABBY)
    assert (result.mask_dense, result.mask_spade) == (0.0, 1.0) and result.strength == 1.0
    assert result.kept_decision is False
    text = result.sentence()
    assert text.startswith("SPADE puts 100 % of the top-10 % saliency mass on the trigger (dense: 0 %), taking "
                           "it mostly from the top right")
    assert "changed the decision (tiger cat → tabby, 40 %)" in text
    # as much on the trigger as dense, but elsewhere off dense's strongest pixels
    moved_off = sparse.copy()
    moved_off[6:8, 0:5] = 0.1
    moved_off[6, 0:5] = moved_off[9, 0:5] = 1.0  # half on the trigger, half in the bottom row (off the trigger)
    dense_half = dense.copy()
    dense_half[0, 5:10] = 0.1
    dense_half[6, 0:5] = 1.0  # dense: half on the trigger too, half in the top right
    same_share = compare_maps(dense_half, moved_off, mask)
    assert (same_share.mask_dense, same_share.mask_spade) == (0.5, 0.5) and same_share.moved == 0.5
    assert same_share.sentence().startswith(
        "SPADE puts 50 % of the top-10 % saliency mass on the trigger (dense: 50 %), about as much as dense, though "
        "50 % of its top mass lies off the dense map's strongest pixels")


def test_a_noisy_pair_and_an_all_zero_map():
    rng = np.random.default_rng(1)
    noisy = compare_maps(rng.normal(size=(30, 30)), rng.normal(size=(30, 30)))
    assert abs(noisy.rank_correlation) < 0.3 and noisy.noisy_difference and not noisy.ranks_alike
    zero = compare_maps(rng.normal(size=(5, 5)), np.zeros((5, 5)))
    assert zero.moved != zero.moved and not zero.nearly_same
    assert zero.sentence().startswith("The SPADE map is all zero")
    assert compare_maps(np.ones((4, 4)), np.ones((4, 4))).kept_decision is None  # no predictions given


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.ones((3, 4)), np.ones((4, 3))), {}, "one size"),
    ((np.ones((3, 4)), np.ones((3, 4)), np.ones((2, 2), bool)), {}, "mask must have the maps' size"),
    ((np.ones(5), np.ones(5)), {}, "non-empty \\(H, W\\) map"),
    ((np.ones((3, 3)), np.full((3, 3), np.nan)), {}, "NaN or infinite"),
    ((np.ones((3, 3)), np.ones((3, 3))), {"top_share": 0.0}, "top share"),
])
def test_bad_input_is_a_config_error(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        compare_maps(*args, **kwargs)


def test_a_pair_gives_the_takeaway_of_its_absolute_maps():
    rng = np.random.default_rng(2)
    raw_dense, raw_spade = (torch.from_numpy(rng.normal(size=(3, 8, 8)).astype(np.float32)) for _ in range(2))
    pair = AttributionPair(torch.zeros(3, 8, 8), Attribution(raw_dense, "saliency", 1, None),
                           Attribution(raw_spade, "saliency", 1, None))
    direct = compare_maps(*pair.maps("absolute"))
    assert pair.takeaway() == direct
    assert direct.moved == pytest.approx(_by_hand(pair.maps("absolute")[0].numpy(),
                                                  pair.maps("absolute")[1].numpy(), 0.1)[0])


def test_the_correlation_note_says_why_maps_look_alike_and_when_their_difference_is_noise():
    from spade_app.maps import correlation_note

    rng = np.random.default_rng(2)
    dense = rng.random((20, 20))
    # a monotone transform of the dense map keeps every rank (correlation 1), yet its top mass can be spread
    alike = compare_maps(dense, np.sqrt(dense))
    assert alike.rank_correlation == pytest.approx(1.0) and alike.ranks_alike and not alike.noisy_difference
    for pixel_level in (True, False):
        note = correlation_note("GradCAM", alike, pixel_level)
        assert note.startswith("The two GradCAM maps rank pixels almost alike (rank correlation 1.00)")
        assert "fitted to reproduce the model on this image" in note
    noisy = compare_maps(dense, rng.random((20, 20)))
    assert noisy.noisy_difference
    assert correlation_note("Saliency", noisy, True).startswith(
        f"The two Saliency maps rank pixels almost independently (rank correlation {noisy.rank_correlation:.2f})")
    assert correlation_note("Occlusion", noisy, False) is None  # a coarse map's difference is not pixel noise
    between = compare_maps(dense, dense + rng.random((20, 20)))
    assert 0.5 <= between.rank_correlation < 0.9 and correlation_note("Saliency", between, True) is None
