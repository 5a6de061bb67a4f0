"""Shared helpers of the human-study tests: a synthetic study (no model needed) and answering tasks."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from spade_study.design import Patch, Study, StudyConfig, StudyItem, png_bytes


def synthetic_study(study_id: str = "synthetic", n_real: int = 6, n_training: int = 1, *,
                    config: StudyConfig | None = None, size: int = 24, seed: int = 0) -> Study:
    """A study with `n_real` + `n_training` items of random small images: enough for storage, assignment
    and the participant pages, without computing anything on a model."""
    rng = np.random.default_rng(seed)
    config = config or StudyConfig(title=f"Study {study_id}", training_tasks=n_training)  # one photo per task
    side = size // 3
    items = []
    for i in range(n_real + n_training):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        truth, distractor = (0, 0, side, side), (size - side, size - side, size, size)
        items.append(StudyItem(
            name=f"image{i}", image_png=png_bytes(image), neuron=i % 3, neuron_name=f"class{i % 3}",
            truth=Patch(truth, png_bytes(image[:side, :side]), 0.9),
            distractor=Patch(distractor, png_bytes(image[-side:, -side:]), 0.1),
            visualizations={c: png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                            for c in config.conditions},
            training=i >= n_real, details={"index": i}))
    return Study(id=study_id, config=config, items=tuple(items), model="synthetic",
                 created=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))


def click(at, label: str):
    """Click the one button labelled ``label`` on an AppTest page, rerun, and check that nothing raised."""
    buttons = [b for b in at.button if b.label == label]
    assert len(buttons) == 1, [b.label for b in at.button]
    buttons[0].click().run()
    assert not at.exception, at.exception
    return at
