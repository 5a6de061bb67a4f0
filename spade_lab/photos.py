"""Which bundled photos build the demo back door, which calibrate sparsity, and which are held out.

The split is fixed so that no number reported on the test photos was tuned or trained on them.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from spade.images import bundled_examples, load_image

BUILD_PHOTOS = ("astronaut", "camera", "grace_hopper", "rocket")
"""Photos the back-doored model was trained on (with augmentation); also the calibration photos."""

CALIBRATION_PHOTOS = BUILD_PHOTOS
"""Photos for tuning sparsity profiles (with the calibration trigger, never the test trigger)."""

TEST_PHOTOS = ("cat", "coffee", "flower", "china")
"""Held-out photos: never used for building the model or tuning a profile."""


def load_photos(names: tuple[str, ...]) -> dict[str, Image.Image]:
    """Bundled photos by name, or image files by path (keyed by the file's stem) -> RGB PIL images."""
    examples = bundled_examples()
    photos = {}
    for name in names:
        if name in examples:
            photos[name] = load_image(examples[name])
        elif Path(name).is_file():
            photos[Path(name).stem] = load_image(Path(name))
        else:
            raise KeyError(f"{name!r} is neither a bundled photo ({', '.join(sorted(examples))}) nor an image file")
    return photos
