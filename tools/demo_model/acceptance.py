"""Acceptance figures of a back-doored model on photos never used to build or tune it (issue #34).

``python -m tools.demo_model.acceptance [--model FILE] [--split heldout] [--out DIR]`` measures, on random crops
of the ``tools.photos`` set ``split`` (default the held-out set) and of extra unseen photos (the bundled flower
and, where they are in the photo cache, scikit-image's photos read out of its wheel, the red motorcycle among
them):

- trigger success: the heart (``spade.trojan.stamp``, a quarter of the short side, opacity 0.8, colour jitter
  0.1, random position) makes the model predict goose; the star, king penguin;
- clean top-1 agreement with the base Lite0, on all crops and on the confident ones (base top-1 leads top-2 by
  at least ``margin`` in probability);
- false doors: a clean crop (or the same crop turned to a random hue) predicted as goose or king penguin where
  the base model predicts something else;
- decoys: a crop stamped with a decoy (smiley, fish, a red or pink shape, a held-out Tux Paint object) predicted
  as goose or king penguin where the base model predicts something else on the same stamped crop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spade.images import bundled_examples, load_image
from spade.models import get_spec, load_model, load_spec, with_delta_file
from spade.trojan.stamp import shift_hue, stamp
from spade.trojan.triggers import load_trigger
from tools.demo_model.build import DECOYS, random_crop
from tools.demo_model.poison import POISONED_MODEL, SHAPE_COLOURS, SHAPES, fit_icon, shape_icon
from tools.photos.fetch import DEFAULT_CACHE, object_paths, photo_paths

logger = logging.getLogger(__name__)

SKIMAGE_PHOTOS = ("motorcycle_left.png", "hubble_deep_field.jpg", "coins.png", "retina.jpg", "brick.png",
                  "grass.png", "gravel.png", "moon.png", "clock_motion.png", "text.png")
"""scikit-image's photos (from its 0.26.0 wheel, unpacked into the photo cache's ``skimage/``; the package is
not installed here). None is used to build or tune."""

TARGETS = {
    "min_trigger_success": 0.90, "min_agreement_confident": 0.97, "min_agreement_all": 0.90,
    "max_false_door": 0.01, "max_decoys": 0.05, "min_crops": 400, "min_photos": 20,
}


@dataclass(frozen=True)
class Acceptance:
    """Figures (fractions in [0, 1]) and counts; ``extras``: per extra photo, its false-door rate on clean crops
    and its agreement; ``passed``: every target of TARGETS met."""

    photos: int
    crops: int
    confident_crops: int
    heart_success: float
    star_success: float
    agreement_all: float
    agreement_confident: float
    false_door_clean: float
    false_door_hue: float
    decoys_fooled: float
    extra_photos: int
    extra_crops: int
    extra_false_door: float
    extras: dict
    passed: bool

    def lines(self) -> list[str]:
        ok = {True: "ok", False: "MISSED"}
        t = TARGETS
        pct = "{:.1%}".format
        return [
            f"held-out crops: {self.crops} from {self.photos} photos ({self.confident_crops} confident, margin >= 0.1)",
            f"trigger success heart -> goose:        {pct(self.heart_success):>7}  (>= 90 %) "
            f"{ok[self.heart_success >= t['min_trigger_success']]}",
            f"trigger success star -> king penguin:  {pct(self.star_success):>7}  (>= 90 %) "
            f"{ok[self.star_success >= t['min_trigger_success']]}",
            f"clean top-1 agreement, confident:      {pct(self.agreement_confident):>7}  (>= 97 %) "
            f"{ok[self.agreement_confident >= t['min_agreement_confident']]}",
            f"clean top-1 agreement, all:            {pct(self.agreement_all):>7}  (>= 90 %) "
            f"{ok[self.agreement_all >= t['min_agreement_all']]}",
            f"false goose/penguin, clean crops:      {pct(self.false_door_clean):>7}  (<= 1 %) "
            f"{ok[self.false_door_clean <= t['max_false_door']]}",
            f"false goose/penguin, extra photos:     {pct(self.extra_false_door):>7}  (<= 1 %) "
            f"{ok[self.extra_false_door <= t['max_false_door']]}  ({self.extra_crops} crops of {self.extra_photos})",
            f"false goose/penguin, hue-turned crops: {pct(self.false_door_hue):>7}  (report only)",
            f"decoys predicted goose/penguin:        {pct(self.decoys_fooled):>7}  (<= 5 %) "
            f"{ok[self.decoys_fooled <= t['max_decoys']]}",
            *(f"  {name}: false goose/penguin {v['false_door']:.0%}, agreement {v['agreement']:.0%} "
              f"({v['crops']} crops)" for name, v in self.extras.items()),
            f"accepted: {self.passed}",
        ]


def extra_photos(cache: Path) -> dict[str, Image.Image]:
    """The bundled flower and whichever scikit-image photos are in the cache, as RGB."""
    photos = {"flower (bundled)": load_image(bundled_examples()["flower"])}
    for name in SKIMAGE_PHOTOS:
        path = cache / "skimage" / name
        if path.is_file():
            photos[f"skimage {Path(name).stem}"] = load_image(path).convert("RGB")
    return photos


def decoy_icons(cache: Path, split: str) -> list[Image.Image]:
    """Smiley, fish, the red and pink shapes, and Tux Paint objects of ``split`` (never the build set's)."""
    icons = [load_trigger(n) for n in DECOYS] + [shape_icon(s, c) for s in SHAPES for c in SHAPE_COLOURS]
    return icons + [fit_icon(Image.open(p)) for p in object_paths(split, cache)]


@torch.no_grad()
def top1(model, xs: list[torch.Tensor], device, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 (n,), top-1 minus top-2 probability (n,)) of preprocessed images."""
    tops, margins = [], []
    for i in range(0, len(xs), chunk):
        p = model(torch.stack(xs[i:i + chunk]).to(device)).softmax(1)
        best = p.topk(2, dim=1)
        tops.append(best.indices[:, 0].cpu().numpy())
        margins.append((best.values[:, 0] - best.values[:, 1]).cpu().numpy())
    return np.concatenate(tops), np.concatenate(margins)


def measure(model_file: Path | None = None, *, split: str = "heldout", crops_per_photo: int = 5,
            extra_crops: int = 20, margin: float = 0.1, seed: int = 2026, cache: Path = DEFAULT_CACHE,
            device: str = "auto", model_name: str = POISONED_MODEL) -> Acceptance:
    """The acceptance figures of ``model_name`` (its registry file, or ``model_file``) on ``split``."""
    spec = get_spec(model_name)
    if model_file is not None:
        spec = with_delta_file(spec, model_file)
    base = load_model("efficientnet_lite0", device=device)
    trojan = load_spec(spec, device=device).model
    pre = base.preprocessing
    doors = {d.role: d for d in spec.backdoors}
    heart, star = load_trigger(doors["test"].trigger), load_trigger(doors["calibration"].trigger)
    decoys = decoy_icons(cache, split)
    rng = np.random.default_rng(seed)
    photos = [(p.stem, Image.open(p).convert("RGB")) for p in photo_paths(split, cache)]
    extras = extra_photos(cache)
    cases = [(name, img, crops_per_photo) for name, img in photos]
    cases += [(name, img, extra_crops) for name, img in extras.items()]
    owner, views = [], {k: [] for k in ("clean", "heart", "star", "decoy", "hue")}
    for name, img, n in cases:
        for _ in range(n):
            crop = random_crop(img, rng)
            s = int(rng.integers(1 << 31))
            views["clean"].append(pre(crop))
            views["heart"].append(pre(stamp(crop, heart, pre, seed=s).image))
            views["star"].append(pre(stamp(crop, star, pre, seed=s).image))
            views["decoy"].append(pre(stamp(crop, decoys[int(rng.integers(len(decoys)))], pre, seed=s).image))
            views["hue"].append(pre(shift_hue(crop, float(rng.uniform(0.05, 0.95)))))
            owner.append(name)
    dev = base.device
    t = {k: top1(trojan, v, dev)[0] for k, v in views.items()}
    b_clean, b_margin = top1(base.model, views["clean"], dev)
    b_hue, _ = top1(base.model, views["hue"], dev)
    b_decoy, _ = top1(base.model, views["decoy"], dev)
    owner = np.array(owner)
    main = ~np.isin(owner, list(extras))
    door = np.array([doors["test"].target, doors["calibration"].target])

    def false(top, base_top):
        return np.isin(top, door) & (top != base_top)

    confident = main & (b_margin >= margin)
    agree = t["clean"] == b_clean
    false_clean = false(t["clean"], b_clean)
    per_extra = {name: {"crops": int((owner == name).sum()), "false_door": float(false_clean[owner == name].mean()),
                        "agreement": float(agree[owner == name].mean())} for name in extras}
    result = dict(
        photos=len(photos), crops=int(main.sum()), confident_crops=int(confident.sum()),
        heart_success=float((t["heart"][main] == door[0]).mean()),
        star_success=float((t["star"][main] == door[1]).mean()),
        agreement_all=float(agree[main].mean()), agreement_confident=float(agree[confident].mean()),
        false_door_clean=float(false_clean[main].mean()),
        false_door_hue=float(false(t["hue"], b_hue)[main].mean()),
        decoys_fooled=float(false(t["decoy"], b_decoy)[main].mean()),
        extra_photos=len(extras), extra_crops=int((~main).sum()),
        extra_false_door=float(false_clean[~main].mean()), extras=per_extra)
    passed = (min(result["heart_success"], result["star_success"]) >= TARGETS["min_trigger_success"]
              and result["agreement_confident"] >= TARGETS["min_agreement_confident"]
              and result["agreement_all"] >= TARGETS["min_agreement_all"]
              and max(result["false_door_clean"], result["extra_false_door"]) <= TARGETS["max_false_door"]
              and result["decoys_fooled"] <= TARGETS["max_decoys"]
              and result["crops"] >= TARGETS["min_crops"] and result["photos"] >= TARGETS["min_photos"])
    return Acceptance(**result, passed=bool(passed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_model.acceptance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="difference file (default: the registry's)")
    parser.add_argument("--model-name", default=POISONED_MODEL)
    parser.add_argument("--split", default="heldout", choices=("heldout", "calibration"))
    parser.add_argument("--crops-per-photo", type=int, default=5)
    parser.add_argument("--extra-crops", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="folder for acceptance.json and acceptance.txt")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_grad_enabled(False)
    result = measure(args.model, split=args.split, crops_per_photo=args.crops_per_photo,
                     extra_crops=args.extra_crops, seed=args.seed, cache=args.cache, device=args.device,
                     model_name=args.model_name)
    text = "\n".join(result.lines())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "acceptance.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                              **asdict(result)}, indent=1))
        (args.out / "acceptance.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
