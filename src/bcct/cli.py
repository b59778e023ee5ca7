"""The ``bcct`` command line: data, synth, pretrain, train, eval, sweep-delta, localize, export, demo, table.

Every command turns bad input (:class:`bcct.errors.BadInput`) into one ``error:`` line and
exit status 2, and Ctrl-C into exit status 130; a traceback means a bug in bcct.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcct.errors import BadInput


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a WSOL method on a data folder (CUB, ILSVRC, wsolevaluation or class folders)")
    p.add_argument("--config", default="synth", help="built-in recipe name (synth, ...) or a YAML file")
    p.add_argument("--method", default=None, help="cam | bcct (overrides the recipe)")
    p.add_argument("--data", required=True, help="data root: CUB-200-2011 layout, class folders ROOT/train/<class>/, "
                   "ILSVRC or wsolevaluation metadata (recognised; data.layout=... to force one)")
    p.add_argument("--backgrounds", default=None, help="Background Image Set folder (default: DATA/backgrounds); 'auto': crops of the training images' borders")
    p.add_argument("--out", default=None, help="run directory (config.yaml, metrics.jsonl, last.pt, best.pt)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUNDIR",
                   help="continue from OUT/last.pt (mid-epoch if it was stopped there); --resume RUNDIR = --out RUNDIR --resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. epochs=3 optim.lr=0.01")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (top-1/top-5 loc, GT-known, MaxBoxAcc, ...)")
    p.add_argument("--checkpoint", required=True, help="a best.pt / last.pt, or imagenet: the pip-shipped ImageNet "
                   "classifier, no training (its feature_norm map first, cam nested; thresholds chosen on val)")
    p.add_argument("--data", default=None, help="data root (default: the one the run trained on)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--oracle", action="store_true", help="choose the CAM threshold on this split (labelled oracle)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write DIR/report.md: the table, accuracy vs CAM threshold (curve.png), the best and "
                        "worst images (best.png, worst.png) and, for bcct, the BC-mask delta sweep")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. eval.threshold_step=0.001")


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="train (or reuse) and evaluate several methods; the paper's Tables 1-2 side by side")
    p.add_argument("--data", default=None, help="data root (default: generate the synthetic set into OUT/synth)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: cam,backprop,has,acol,spg,adl,"
                   "bcct; also spg_plain = spg with extra.spg.plain=true)")
    p.add_argument("--out", required=True, help="writes OUT/runs/<method>/, table.md, table.csv, table.json, figure.png")
    p.add_argument("--config", default="synth", help="built-in recipe name or a YAML file, for every method")
    p.add_argument("--quick", action="store_true", help="2 epochs (and a smaller generated set) for CI")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every method, e.g. epochs=5")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="get a data set onto disk: CUB-200-2011 (download and check), ILSVRC (check)")
    kinds = p.add_subparsers(dest="dataset", required=True)
    c = kinds.add_parser("cub", help="download CUB-200-2011, verify its MD5, extract it into ROOT, check the layout")
    c.add_argument("root", metavar="ROOT", help="where the data set goes (then --data ROOT); archives stay beside it")
    c.add_argument("--segmentations", action="store_true", help="also the masks (into ROOT/segmentations)")
    c.add_argument("--from", dest="from_file", metavar="FILE", help="CUB_200_2011.tgz already on disk (no download)")
    c.add_argument("--segmentations-from", metavar="FILE",
                   help="segmentations.tgz already on disk (implies --segmentations)")
    c.add_argument("--md5", metavar="HEX", help="expected MD5 of the CUB archive (default: the published one)")
    c.add_argument("--segmentations-md5", metavar="HEX",
                   help="expected MD5 of the masks archive (Caltech publishes none; the default is a third-party one)")
    c.add_argument("--url", metavar="URL", help="download the CUB archive from here (a mirror)")
    c.add_argument("--segmentations-url", metavar="URL", help="download the masks archive from here")
    c.add_argument("--force", action="store_true", help="install again even if ROOT holds the layout (replaces it)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    i = kinds.add_parser("ilsvrc", help="what to fetch from image-net.org (it needs a login); check ROOT once there")
    i.add_argument("root", metavar="ROOT")
    i.add_argument("--metadata", default="",
                   help="wsolevaluation's metadata/ILSVRC folder (default: ROOT/metadata if there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the procedural CUB-layout data set with a Background Image Set")
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--backgrounds", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("pretrain", help="pretrain the small backbone on the stand-in task (cached)")
    p.add_argument("--force", action="store_true", help="pretrain again even if cached")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 400)")

    _add_train(sub)
    _add_eval(sub)

    p = sub.add_parser("sweep-delta", help="BC* over delta from a bcct checkpoint (Table 2-3); --train retrains per delta")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="val (default): where delta is chosen; test: labelled ORACLE")
    p.add_argument("--deltas", default="0.5,0.6,0.7,0.75,0.8,0.85,0.9")
    p.add_argument("--json", default=None)
    p.add_argument("--train", action="store_true", help="also retrain BC-CT for every delta (paper Table 3)")
    p.add_argument("--out", default=None, help="run directories for --train")

    p = sub.add_parser("localize", help="boxes for any images with a checkpoint: OUT/boxes.json and overlays")
    p.add_argument("--checkpoint", required=True, help="a best.pt / last.pt, a MODEL.onnx from bcct export, or "
                   "imagenet: the pip-shipped ImageNet classifier, no training")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="writes OUT/boxes.json and OUT/overlays/<stem>.png")
    p.add_argument("--threshold", type=float, default=None, help="CAM threshold (default: the one chosen on val; "
                   "imagenet: feature_norm 0.41, chosen on cub_dev's val split, cam 0.27)")
    p.add_argument("--readout", default=None, help="score map to read (default: the one with the best val top-1 "
                   "localisation, e.g. BC-CT's box; the primary one when val had no boxes; imagenet: feature_norm, "
                   "64.1 vs cam's 53.1 GT-known on cub_dev birds, or --readout cam)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-overlays", action="store_true", help="write boxes.json only")

    p = sub.add_parser("export", help="a checkpoint as one ONNX file (logits + score maps, metadata) for onnxruntime")
    p.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by bcct train")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="then: bcct localize --checkpoint MODEL.onnx ...")

    p = sub.add_parser("demo", help="the embedded default end to end: data, stand-in pretraining, methods, report")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="a smaller, shorter run (about 2 minutes)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all the demo knows)")

    _add_table(sub)
    _add_data(sub)
    return parser


def cmd_synth(args) -> int:
    from bcct.data.synth import generate

    try:
        info = generate(args.out, n_classes=args.classes, n_images=args.images, n_backgrounds=args.backgrounds,
                        seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    print(f"wrote {info['n_images']} images ({info['n_classes']} classes) and {info['n_backgrounds']} backgrounds "
          f"to {info['out_dir']} in {info['seconds']:.1f} s")
    return 0


def cmd_pretrain(args) -> int:
    from bcct.backbones import make_vgg
    from bcct.pretrain import standin_path, standin_weights

    if args.force:
        standin_path(args.steps).unlink(missing_ok=True)
    standin_weights(make_vgg, args.steps)
    print(f"stand-in weights: {standin_path(args.steps)}")
    return 0


def cmd_train(args) -> int:
    from bcct import distributed
    from bcct.config import load_config
    from bcct.train import train

    out, resume, overrides = _run_dir(args)
    fields = {"method": args.method}
    cfg = load_config(args.config, overrides, **fields)
    cfg.data.root = args.data
    if args.backgrounds:
        cfg.data.backgrounds = args.backgrounds
    result = train(cfg, out, progress=not args.quiet, resume=resume)
    if distributed.launcher_rank() == 0:  # the process group is left: torchrun's RANK says who prints
        print(f"done: {out}/best.pt (val thresholds {result['thresholds']})")
    return 0


def _run_dir(args) -> tuple[str, bool, list[str]]:
    """(run dir, resume?, overrides) from --out and --resume [RUNDIR]. A key=value right after
    a bare --resume is an override that argparse took for RUNDIR."""
    resume, overrides = args.resume, list(args.overrides)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        resume, overrides = True, [resume] + overrides
    out = args.out
    if isinstance(resume, str):
        if out and Path(out).resolve() != Path(resume).resolve():
            raise BadInput(f"--out {out} and --resume {resume} name different run directories; give one")
        out = resume
    if not out:
        raise BadInput("train needs a run directory: --out RUNDIR (or --resume RUNDIR to continue one)")
    return out, bool(resume), overrides


def cmd_eval(args) -> int:
    from bcct.report import format_table

    kwargs = dict(data=args.data, split=args.split, oracle=args.oracle, overrides=args.overrides)
    if args.report:
        from bcct.eval_report import evaluate_and_report

        metrics = evaluate_and_report(args.checkpoint, args.report, **kwargs)
    else:
        from bcct.run import evaluate_checkpoint

        metrics = evaluate_checkpoint(args.checkpoint, **kwargs)
    print(format_table({"": metrics}))
    if args.json:
        from bcct.checkpoint import write_text_atomic

        write_text_atomic(json.dumps(metrics, indent=2), args.json)
    if args.report:
        print(f"report: {Path(args.report) / 'report.md'}")
    return 0


def cmd_sweep_delta(args) -> int:
    from bcct.checkpoint import write_text_atomic
    from bcct import checkpoint
    from bcct.sweep import format_sweep, run_sweep

    try:
        deltas = [float(d) for d in args.deltas.split(",")]
    except ValueError:
        raise BadInput(f"--deltas {args.deltas!r}: expected comma-separated numbers, e.g. 0.7,0.8,0.9") from None
    if args.train and not args.out:
        raise BadInput("--train needs --out DIR for the per-delta runs")
    result = run_sweep(args.checkpoint, deltas, data=args.data, split=args.split, train_out=args.out if args.train else None)
    b = checkpoint.load(args.checkpoint)["config"].get("bcct", {})
    print(format_sweep(result, args.split, "max" if b.get("literal") else b.get("normalize")))
    if args.json:
        write_text_atomic(json.dumps(result, indent=2), args.json)
    return 0


def cmd_localize(args) -> int:
    from bcct.localize import localize_paths

    result = localize_paths(args.checkpoint, args.paths, args.out, threshold=args.threshold, readout=args.readout,
                            batch_size=args.batch_size, overlays=not args.no_overlays)
    how = {"given": "given", "val": "best on val", "primary": "primary"}[result["readout_choice"]]
    print(f"localized {len(result['images'])} images ({len(result['skipped'])} skipped) with the "
          f"{result['readout']} readout ({how}) at threshold {result['threshold']:g} -> {Path(args.out) / 'boxes.json'}")
    return 0


def cmd_export(args) -> int:
    from bcct.export import export_onnx

    info = export_onnx(args.checkpoint, args.out)
    thresholds = ", ".join(f"{k} {v:g}" for k, v in info["thresholds"].items()) or "none (pass --threshold)"
    left_out = f"; left out (gradient readouts): {', '.join(info['left_out'])}" if info["left_out"] else ""
    check = ("" if info["max_abs_diff"] is None else
             f"; onnxruntime vs PyTorch on a random batch: max |diff| {info['max_abs_diff']:.1e}")
    print(f"exported {info['method']} ({len(info['class_names'])} classes, {info['input_size']} px, readouts "
          f"{', '.join(info['readouts'])}{left_out}; val thresholds {thresholds}) -> {info['out']} "
          f"({info['bytes'] / 1e6:.1f} MB){check}")
    return 0


def cmd_demo(args) -> int:
    from bcct.demo import run_demo

    methods = args.methods.split(",") if args.methods else None
    run_demo(args.out, quick=args.quick, methods=methods)
    return 0


def cmd_table(args) -> int:
    from bcct.report import format_table
    from bcct.table import run_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    results = run_table(args.out, data=args.data, methods=methods, config=args.config, quick=args.quick,
                        overrides=args.overrides, progress=not args.quiet)
    print(format_table(results))
    out = Path(args.out)
    print(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'table.json'}, {out / 'figure.png'}")
    return 0


def cmd_data(args) -> int:
    from bcct.data import download

    if args.dataset == "cub":
        download.install_cub(args.root, segmentations=args.segmentations, from_file=args.from_file,
                             segmentations_from=args.segmentations_from, md5=args.md5,
                             segmentations_md5=args.segmentations_md5, url=args.url,
                             segmentations_url=args.segmentations_url, force=args.force, progress=not args.quiet)
        return 0
    try:
        layout, wset = download.check_ilsvrc(args.root, args.metadata)
    except BadInput:
        print(download.ILSVRC_HELP)
        raise
    print(f"{args.root}: {layout} layout OK: {download.summary(wset)}; train with --data {args.root} "
          f"data.layout={layout}" + (f" data.metadata={args.metadata}" if args.metadata else ""))
    return 0


COMMANDS = {"synth": cmd_synth, "pretrain": cmd_pretrain, "train": cmd_train, "eval": cmd_eval,
            "sweep-delta": cmd_sweep_delta, "localize": cmd_localize, "export": cmd_export, "demo": cmd_demo, "table": cmd_table,
            "data": cmd_data}


def _one_line(message: str) -> str:
    """A BadInput raised in a DataLoader worker comes back wrapped in the worker's traceback;
    keep only the original one-line message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith("bcct.errors.BadInput: ") else last


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides anywhere among the options
    (``train --data D epochs=3 --out R lr=0.01``): argparse alone takes only their first run."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and not any(r.startswith("-") for r in rest):
        args.overrides = list(args.overrides) + rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a diverged run: every process stops; one prints
        from bcct import distributed

        if distributed.launcher_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
