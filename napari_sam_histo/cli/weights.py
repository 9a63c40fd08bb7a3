"""``napari-sam-histo weights``: list the known models, show where their weights are, fetch them."""

from __future__ import annotations

import argparse


def _cmd_weights(args: argparse.Namespace) -> int:
    from ..models.registry import get_spec, list_models
    from ..models.weights import candidate_paths, fetch_weights, find_weights, models_dir

    if args.action == "list":
        print(f"{'model':24} {'arch':6} {'on disk':8} {'where (or where fetch puts it)':64} description")
        for spec in list_models():
            path = next((p for p in candidate_paths(spec.weights) if p.is_file()), None)
            where = path or models_dir() / spec.weights.filename
            print(f"{spec.name:24} {spec.arch:6} {'yes' if path else 'no':8} {str(where):64} {spec.description}")
        return 0
    spec = get_spec(args.name)
    if args.action == "path":
        path = find_weights(spec.weights)
        if path is None:
            print(f"{spec.name}: not on disk (fetch with `napari-sam-histo weights fetch {spec.name}`)")
            return 1
        print(path)
        return 0
    path = fetch_weights(spec.weights)
    print(f"{spec.name}: {path} (verified {spec.weights.expected_hash or 'sha256 recorded'})")
    return 0


def add_weights(sub: argparse._SubParsersAction) -> None:
    weights = sub.add_parser("weights", help="list models, show where weights are, fetch weights")
    wsub = weights.add_subparsers(dest="action", required=True)
    wsub.add_parser("list", help="every known model, and whether its weights are on disk")
    for action, text in (("fetch", "download (or extract) and verify a model's weights"),
                         ("path", "print the verified local path of a model's weights")):
        p = wsub.add_parser(action, help=text)
        p.add_argument("name", nargs="?", default="vit_t")
    weights.set_defaults(func=_cmd_weights)
