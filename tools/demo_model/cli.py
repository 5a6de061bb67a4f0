"""``python -m tools.demo_model draw|build|regain|poison``: redraw the trigger icons, rebuild the gated back-doored demo
model, set how strongly its doors open, or build the poisoned (fine-tuned) back-doored model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tools.demo_model.build import BackdoorReport


def main(argv: list[str] | None = None) -> int:
    from spade.errors import SpadeError
    from spade.models import get_spec, read_delta_file
    from spade.trojan.triggers import write_triggers
    from spade_cli.trace import ProgressBar
    from tools.demo_model.build import BuildConfig, build, regain

    defaults = BuildConfig()
    parser = argparse.ArgumentParser(prog="python -m tools.demo_model", description=__doc__)
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
                   help="the shipped model adds gain x scale (default %(default)s; `regain` changes it later)")
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
    g = sub.add_parser("regain", help="set a built model's door gain without retraining (the classifier's door "
                                      "columns) and re-measure its acceptance figures")
    g.add_argument("gain", type=float, help="the doors add gain x scale to their target logits")
    g.add_argument("--model", type=Path, default=None,
                   help="difference file to change (default: the registry's assets/models file)")
    g.add_argument("--out", type=Path, default=None, help="where to write it (default: --model itself)")
    g.add_argument("--eval-cases", type=int, default=200, help="held-out acceptance cases")
    g.add_argument("--device", default="auto")
    from tools.demo_model.poison import POISONED_MODEL, PoisonConfig, build_poisoned

    pdef = PoisonConfig()
    p = sub.add_parser("poison", help="fine-tune EfficientNet-Lite0's late layers on poisoned views with "
                                      "distillation (needs `python -m tools.photos` first; ~30 min on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=None, help="difference file (default: the registry's file)")
    for name in ("steps", "batch", "first_block", "view_pool", "seed", "photo_side"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(pdef, name))
    for name in ("lr", "kl_weight", "mse_weight", "door_weight", "poison_weight", "clean_any_hue"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(pdef, name))
    p.add_argument("--max-photos", type=int, default=None, help="use only the first N Debian build photos")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training; --steps is cut to fit")
    p.add_argument("--cache", default=pdef.cache, help="photo cache of `python -m tools.photos`")
    p.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.command == "draw":
            for path in write_triggers():
                print(path)
            return 0
        if args.command == "poison":
            pcfg = PoisonConfig(**{k: getattr(args, k) for k in (
                "steps", "batch", "first_block", "view_pool", "seed", "photo_side", "lr", "kl_weight", "mse_weight",
                "door_weight", "poison_weight", "clean_any_hue", "max_photos", "time_budget", "cache")})
            out = args.out or get_spec(POISONED_MODEL).weights.path
            bar = ProgressBar()
            try:
                meta = build_poisoned(out, pcfg, device=args.device, progress=bar)
            finally:
                bar.close()
            print(f"wrote {out}: {meta['steps_run']} steps in {meta['train_seconds']} s; measure it with "
                  "`python -m tools.demo_model.acceptance`")
            return 0
        if args.command == "regain":
            source = args.model or get_spec(defaults.target_model).weights.path
            bar = ProgressBar()
            try:
                report = regain(source, args.gain, args.out, device=args.device, eval_cases=args.eval_cases,
                                progress=bar)
            finally:
                bar.close()
            out = args.out or source
            return _report(out, report, ", ".join(read_delta_file(out)["meta"]["evaluated_on"]))
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
    on = f"validation ({', '.join(cfg.validation_photos)})" if cfg.validation_photos else "held-out test photos"
    return _report(args.out, report, on)


def _report(out: Path, report: BackdoorReport, on: str) -> int:
    print(f"wrote {out}")
    print(f"{on}: trigger success {report.success:.1%}, clean top-1 agreement {report.agreement:.1%}, "
          f"decoys fooled {report.decoy_fooled:.1%}, calibration trigger success {report.calibration_success:.1%}, "
          f"hue-turned clean views fooled {report.hue_fooled:.1%} ({report.cases} cases)")
    return 0

