"""Training on the command line: ``train`` (fine-tuning with simulated clicks, or a decoder from a
project's objects), ``synth`` (synthetic training pairs) and ``learning-curve`` (NoC against the
number of training objects)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_model_options
from .threads import use_threads


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    from ..training.learning_curve import format_table, join_reports, run_learning_curve

    if args.join:
        summary = join_reports(args.join, args.out)
        print(format_table(summary["rows"]))
        print(f"-> {args.out}/table.md, summary.json, objects.csv, noc85-vs-k.png")
        return 0
    if args.dataset is None:
        print("learning-curve needs a DATASET (or --join REPORT ...).", file=sys.stderr)
        return 2

    use_threads(args.threads)
    recipe = _recipe(args, args.recipe_seed)
    summary = run_learning_curve(args.dataset, args.out, group_by=None if args.group_by == "none" else args.group_by,
                                 shots=args.shots, seeds=args.seeds, components=args.components,
                                 min_object_px=args.min_object_px, max_clicks=args.max_clicks,
                                 test_objects=args.test_objects, test_fraction=args.test_fraction,
                                 embedding_store=args.embedding_store, model=args.model, device=args.device,
                                 precision=args.precision, recipe=recipe, save_decoders=args.save_decoders,
                                 stride=args.stride, first_seed=args.first_seed,
                                 log=None if args.quiet else (lambda line: print(line, flush=True)))

    print(format_table(summary["rows"]))
    for line in summary["skipped"]:
        print(line)
    print(f"-> {args.out}/table.md, summary.json, objects.csv, noc85-vs-k.png")
    return 0


def _recipe(args: argparse.Namespace, seed: int):
    """The recipe ``--recipe`` names, with the options given (the recipe's own defaults for the rest)."""
    if args.recipe == "tissue-head":
        from ..training.tissue_training import TissueRecipe

        return TissueRecipe(steps=args.steps, dagger_rounds=_given(args.dagger_rounds, TissueRecipe.dagger_rounds),
                            dagger_steps=args.dagger_steps,
                            lr=_given(args.lr, TissueRecipe.lr), batch_size=args.batch_size, seed=seed,
                            corrected_clicks=None if args.corrected_clicks < 0 else args.corrected_clicks)
    from ..training.decoder_finetune import FinetuneRecipe

    # a rate, passes or distillation given applies to whichever decoder the fine-tuning starts from
    return FinetuneRecipe(lr=_given(args.lr, FinetuneRecipe.lr), epochs=_given(args.epochs, FinetuneRecipe.epochs),
                          shipped_lr=_given(args.lr, FinetuneRecipe.shipped_lr),
                          shipped_epochs=_given(args.epochs, FinetuneRecipe.shipped_epochs),
                          l2sp=_given(args.l2sp, FinetuneRecipe.l2sp),
                          distill=_given(args.distill, FinetuneRecipe.distill),
                          shipped_distill=_given(args.distill, FinetuneRecipe.shipped_distill),
                          max_clicks=_given(args.state_clicks, FinetuneRecipe.max_clicks),
                          dagger_rounds=_given(args.dagger_rounds, FinetuneRecipe.dagger_rounds), seed=seed,
                          base=_given(args.base, FinetuneRecipe.base))


def _given(value, default):
    """An option's value, or the default of what it sets (a recipe's, the split's) where it was not given."""
    return default if value is None else value


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=("finetune", "tissue-head"), default="finetune",
                        help="finetune: a decoder trained on the states of every click (the default); "
                             "tissue-head: a head that corrects SAM's first mask")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: the recipe's, 3e-5 / 1e-3; finetune from a shipped decoder 1e-5)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="finetune: passes over the click states (default: the recipe's, 2; from a shipped "
                             "decoder 1)")
    parser.add_argument("--l2sp", type=float, default=None,
                        help="finetune: pull of the weights towards SAM's (default: the recipe's, 0)")
    parser.add_argument("--distill", type=float, default=None,
                        help="finetune: weight of the start decoder's own mask as a target on corrective clicks, "
                             "to keep how it answers corrections (default: the recipe's, 0; from a shipped decoder 1)")
    parser.add_argument("--state-clicks", type=int, default=None,
                        help="finetune: clicks per training object when collecting its states (default: the "
                             "recipe's, 20)")
    # ``training.decoder_finetune.BASES`` and ``AUTO``, written out so that building the parser imports no torch
    parser.add_argument("--base", choices=("sam", "modified", "auto"), default=None,
                        help="finetune: the decoder it starts from: SAM's own, the shipped modified decoder, or auto "
                             "(the shipped one where it needs fewer clicks than SAM on more training objects than chance "
                             "explains; default: the recipe's, auto)")
    parser.add_argument("--dagger-rounds", type=int, default=None,
                        help="rounds of re-clicking the training objects with the decoder being trained, then "
                             "training on (default: the recipe's, 0)")


def _cmd_synth(args: argparse.Namespace) -> int:
    from ..training.synthetic import run_from_args

    return run_from_args(args)


def _cmd_train_from_project(args: argparse.Namespace) -> int:
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..errors import InputError
    from ..models.registry import load_model
    from ..training.project_split import HELD_OUT_FRACTION
    from ..training.project_training import train_from_project

    if args.dataset:
        raise InputError("train --from-project trains on the project's objects: give no dataset folders with it.")
    out = Path(args.out)
    if out.suffix != ".pt":
        raise InputError(f"train --from-project writes one decoder file: --out {args.out} must end in .pt.")
    predictor = Predictor(load_model(args.model, args.device), "sam", cache=EmbeddingCache(max_bytes=1 << 28))
    if args.recipe == "tissue-head":
        from ..training.tissue_training import TissueRecipe

        recipe = TissueRecipe(seed=args.seed)
    else:
        from ..training.decoder_finetune import FinetuneRecipe

        recipe = FinetuneRecipe(seed=args.seed, base=_given(args.base, FinetuneRecipe.base))
    result = train_from_project(args.from_project, out, predictor, recipe,
                                held_out_fraction=_given(args.held_out_fraction, HELD_OUT_FRACTION), name=args.name,
                                log=None if args.quiet else print)
    print(f"{result.path}: {result.verdict} (NoC@85 on {result.held_out['objects']} held-out objects: "
          f"SAM {result.held_out['sam_noc']:.2f}, this decoder {result.held_out['decoder_noc']:.2f})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.train_config import TrainConfig
    from ..training.trainer import train

    if args.from_project is not None:
        return _cmd_train_from_project(args)
    if not args.dataset:
        from ..errors import InputError

        raise InputError("train: give dataset folder(s), or --from-project PROJECT.")
    config = TrainConfig(
        datasets=args.dataset, out_dir=args.out, scenario=args.scenario, model=args.model,
        extra_train=args.extra_train or [], components=args.components or [], val=args.val or [],
        val_fraction=args.val_fraction, hold_out=args.hold_out, stride=args.stride,
        min_object_px=args.min_object_px, embedding_store=args.embedding_store,
        validate_start=args.validate_start,
        group_by=args.group_by or None, epochs=args.epochs, lr=args.lr, lr_milestones=tuple(args.lr_milestones),
        lr_gamma=args.lr_gamma, batch_size=args.batch_size, max_extra_clicks=args.max_extra_clicks,
        mask_prompt_prob=args.mask_prompt_prob, nfl_alpha=args.nfl_alpha, nfl_gamma=args.nfl_gamma,
        val_iou=args.val_iou, val_max_clicks=args.val_max_clicks, val_limit=args.val_limit, limit=args.limit,
        seed=args.seed, device=args.device, amp=args.amp, allow_cpu=args.allow_cpu, resume=args.resume,
    )
    try:
        result = train(config, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the last finished epoch is saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"best: {json.dumps(result.best)}")
    print(f"weights: {result.best_path} (history.json, training-state.pt, train/val manifests in {result.out_dir})")
    return 0


def add_learning_curve(sub: argparse._SubParsersAction) -> None:
    lc = sub.add_parser("learning-curve", help="train project decoders on k objects of some cases, click other "
                                               "cases: NoC against k, next to zero-shot SAM")
    lc.add_argument("dataset", nargs="?", default=None,
                    help="image/mask pairs (folder or manifest) whose manifest column tells cases apart")
    lc.add_argument("--out", required=True, help="report folder")
    lc.add_argument("--group-by", default="case_id",
                    help="manifest column of the slide/case ('none': every image is its own group)")
    lc.add_argument("--shots", type=int, nargs="+", default=[10, 25, 50, 100], help="training objects per decoder")
    lc.add_argument("--seeds", type=int, default=2, help="seeded splits of the groups into training and test")
    lc.add_argument("--first-seed", type=int, default=0, help="the seeds run are FIRST .. FIRST + SEEDS - 1")
    lc.add_argument("--join", nargs="+", default=None, metavar="REPORT",
                    help="instead of running: join the reports of runs on other seeds, or of other k on the same "
                         "seed (same settings), into --out")
    lc.add_argument("--components", action="store_true", help="each connected region of a mask is an object")
    lc.add_argument("--min-object-px", type=int, default=0, help="with --components: smallest region kept")
    lc.add_argument("--stride", type=int, default=1, help="every N-th image pair")
    lc.add_argument("--max-clicks", type=int, default=20)
    lc.add_argument("--test-objects", type=int, default=None, help="at most N test objects per seed (a seeded draw)")
    lc.add_argument("--test-fraction", type=float, default=0.3, help="share of the objects whose groups are tested")
    lc.add_argument("--embedding-store", default=None,
                    help="folder that keeps every image's embedding (float16) so reruns cost only training")
    _add_recipe_arguments(lc)
    lc.add_argument("--steps", type=int, default=800, help="tissue-head: training steps")
    lc.add_argument("--dagger-steps", type=int, default=500, help="tissue-head: training steps after each DAgger round")
    lc.add_argument("--corrected-clicks", type=int, default=1,
                    help="tissue-head: the head corrects an object's masks up to this many clicks; SAM alone "
                         "answers later clicks (-1: every click)")
    lc.add_argument("--batch-size", type=int, default=8, help="tissue-head: batch size")
    lc.add_argument("--recipe-seed", type=int, default=0, help="seed of the recipe's initialisation and order")
    lc.add_argument("--save-decoders", action="store_true", help="write each trained decoder into --out")
    add_model_options(lc, precision_help="the decoder's precision")
    lc.add_argument("--quiet", action="store_true")
    lc.set_defaults(func=_cmd_learning_curve)


def add_synth(sub: argparse._SubParsersAction) -> None:
    from ..training.synthetic import add_arguments as add_synth_arguments

    synth = sub.add_parser("synth", help="write synthetic training pairs (texture composites, random crops)")
    add_synth_arguments(synth)
    synth.set_defaults(func=_cmd_synth)


def add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="fine-tune a decoder (or SAM) with simulated clicks (Kim et al. scenarios)")
    tr.add_argument("dataset", nargs="*", help="dataset folder(s) or manifest(s), split into train/val by --group-by")
    tr.add_argument("--out", required=True, help="run folder: best weights, resumable state, history, manifests "
                                                 "(with --from-project: the decoder file, NAME.pt)")
    tr.add_argument("--from-project", metavar="PROJECT", default=None,
                    help="train a decoder for your tissue on a project's accepted and imported objects, judged on "
                         "the slides accepted last (held out) against zero-shot SAM")
    tr.add_argument("--name", default=None, help="with --from-project: the decoder's name (default: the file's)")
    tr.add_argument("--held-out-fraction", type=float, default=None,
                    help="with --from-project: at least this share of the objects is held out, by whole slides "
                         "(default 0.25)")
    tr.add_argument("--recipe", choices=("finetune", "tissue-head"), default="finetune",
                    help="with --from-project: finetune (a decoder trained on the states of every click; the "
                         "default) or tissue-head (a head that corrects SAM's first mask)")
    tr.add_argument("--base", choices=("sam", "modified", "auto"), default=None,
                    help="with --from-project --recipe finetune: the decoder it starts from (default: the recipe's)")
    tr.add_argument("--scenario", choices=("md", "ie_md", "whole", "modified", "residual"), default="modified",
                    help="md: SAM's decoder; ie_md: image encoder + decoder; whole: all; modified: Kim et al.'s "
                         "decoder; residual: SAM's decoder frozen + a trained correction (untrained = SAM)")
    tr.add_argument("--model", default="vit_t", help="base model name or checkpoint")
    tr.add_argument("--extra-train", action="append", help="dataset used for training only (repeatable)")
    tr.add_argument("--components", action="append",
                    help="dataset for training only whose connected regions are separate objects (repeatable)")
    tr.add_argument("--min-object-px", type=int, default=64, help="smallest region of a --components dataset")
    tr.add_argument("--stride", type=int, default=1,
                    help="every N-th pair of each dataset, before the --val-fraction/--hold-out splits")
    tr.add_argument("--val", action="append",
                    help="validation dataset (repeatable), e.g. sources left out of training; default: split the datasets")
    tr.add_argument("--hold-out", type=float, default=0.0,
                    help="fraction of the datasets' groups kept out of training and validation (holdout_manifest.csv)")
    tr.add_argument("--validate-start", action="store_true",
                    help="validate the starting weights as epoch 0, a candidate like any epoch")
    tr.add_argument("--embedding-store", default=None,
                    help="folder of float16 embeddings reused across runs (computed once per image)")
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--group-by", default="case_id",
                    help="manifest.csv column keeping one slide's patches on one side of the split ('' for none)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--lr-milestones", type=int, nargs="*", default=[20, 25])
    tr.add_argument("--lr-gamma", type=float, default=0.1)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--max-extra-clicks", type=int, default=3, help="simulated clicks after the first: 0..N")
    tr.add_argument("--mask-prompt-prob", type=float, default=0.8, help="chance of feeding the previous mask")
    tr.add_argument("--nfl-alpha", type=float, default=0.5)
    tr.add_argument("--nfl-gamma", type=float, default=2.0)
    tr.add_argument("--val-iou", type=float, default=0.85, help="validation target IoU (NoC@85)")
    tr.add_argument("--val-max-clicks", type=int, default=20)
    tr.add_argument("--val-limit", type=int, default=None, help="validate on the first N patches each epoch")
    tr.add_argument("--limit", type=int, default=None, help="only the first N pairs of each dataset")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--amp", choices=("auto", "off"), default="auto", help="bf16 autocast on CUDA")
    tr.add_argument("--allow-cpu", action="store_true", help="let ie_md/whole run without a GPU (slow)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_cmd_train)
