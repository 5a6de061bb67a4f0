"""``python -m spade.trojan draw|build``: redraw the trigger icons, or rebuild the back-doored demo model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from spade.errors import SpadeError
    from spade.models import get_spec
    from spade.trojan.build import BuildConfig, build
    from spade.trojan.triggers import write_triggers
    from spade_cli.trace import ProgressBar

    defaults = BuildConfig()
    parser = argparse.ArgumentParser(prog="python -m spade.trojan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("draw", help="draw the trigger icons into assets/triggers/")
    b = sub.add_parser("build", help="train the back-doored EfficientNet-Lite0's trigger detector "
                                     "(~17 min on a 2-core CPU)")
    b.add_argument("--out", type=Path, default=None,
                   help="difference file to write (default: the registry's assets/models file; with --validate-on "
                        "trial.pt, so that a settings trial never replaces the shipped model)")
    b.add_argument("--steps", type=int, default=defaults.steps)
    b.add_argument("--batch", type=int, default=defaults.batch)
    b.add_argument("--lr", type=float, default=defaults.lr)
    b.add_argument("--seed", type=int, default=defaults.seed)
    b.add_argument("--first-block", type=int, default=defaults.first_block,
                   help="the detector copies blocks.N and later (default %(default)s)")
    b.add_argument("--scale", type=float, default=defaults.scale,
                   help="target logit added per unit of the door's mean map (default %(default)s)")
    b.add_argument("--gain", type=float, default=defaults.gain,
                   help="the shipped model adds gain x scale (default %(default)s): head-room for SPADE traces")
    b.add_argument("--margin", type=float, default=defaults.margin,
                   help="clean maps are pushed below -margin (default %(default)s)")
    b.add_argument("--shut-weight", type=float, default=defaults.shut_weight,
                   help="weight of keeping the doors shut on clean views (default %(default)s)")
    b.add_argument("--decoy-any-hue", action=argparse.BooleanOptionalAction, default=defaults.decoy_any_hue,
                   help="paste the decoy icons in random hues (default %(default)s)")
    b.add_argument("--clean-any-hue", type=float, default=defaults.clean_any_hue, metavar="FRACTION",
                   help="fraction of the clean views turned to a random hue (default %(default)s)")
    b.add_argument("--view-pool", type=int, default=defaults.view_pool,
                   help="views made once and run once through the base layers (default %(default)s)")
    b.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training; --steps is cut to what fits (the steps run are recorded)")
    b.add_argument("--eval-cases", type=int, default=200, help="held-out acceptance cases")
    b.add_argument("--validate-on", default="", metavar="PHOTOS",
                   help="comma-separated build photos to leave out of training and report the figures on, for "
                        "choosing settings without the test photos")
    b.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.command == "draw":
            for path in write_triggers():
                print(path)
            return 0
        cfg = BuildConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                          first_block=args.first_block, view_pool=args.view_pool, scale=args.scale, gain=args.gain,
                          margin=args.margin, shut_weight=args.shut_weight,
                          decoy_any_hue=args.decoy_any_hue, clean_any_hue=args.clean_any_hue,
                          time_budget=args.time_budget,
                          validation_photos=tuple(p for p in args.validate_on.split(",") if p))
        if args.out is None:
            args.out = Path("trial.pt") if cfg.validation_photos else get_spec(cfg.target_model).weights.path
        bar = ProgressBar()
        try:
            report = build(args.out, cfg, device=args.device, eval_cases=args.eval_cases, progress=bar)
        finally:
            bar.close()
    except SpadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    on = f"validation ({', '.join(cfg.validation_photos)})" if cfg.validation_photos else "held-out test photos"
    print(f"{on}: trigger success {report.success:.1%}, clean top-1 agreement {report.agreement:.1%}, "
          f"decoys fooled {report.decoy_fooled:.1%}, calibration trigger success {report.calibration_success:.1%}, "
          f"hue-turned clean views fooled {report.hue_fooled:.1%} ({report.cases} cases)")
    return 0

