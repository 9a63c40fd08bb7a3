"""``napari-sam-histo project``: a project's training set (list, import annotations, remove)."""

from __future__ import annotations

import argparse


def _cmd_project(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.project_store import ProjectStore

    store = ProjectStore(args.project)
    if args.action == "import":
        from ..engine.embedding_cache import EmbeddingCache
        from ..engine.predictor import Predictor
        from ..models.registry import load_model
        from ..training.project_import import import_annotations

        predictor = Predictor(load_model(args.model, args.device), "sam", cache=EmbeddingCache(max_bytes=1 << 28))
        for annotations in args.annotations:
            print(import_annotations(store, args.slide, annotations, predictor, args.tile_size, args.classes).text())
    elif args.action == "remove":
        if (args.slide is None) == (args.object is None):
            raise InputError("project remove: give --slide NAME or --object ID (one of them).")
        gone = store.remove_slide(args.slide) if args.slide is not None else store.remove_object(args.object)
        if not gone:
            raise InputError(f"{args.project}: no object of {args.slide!r} in the project." if args.slide is not None
                             else f"{args.project}: no object with id {args.object!r} in the project.")
        print(f"{gone} object(s) removed from {args.project}.")
    print(store.summary())
    return 0


def add_project(sub: argparse._SubParsersAction) -> None:
    project = sub.add_parser("project", help="a project's training set: the objects accepted or imported on its "
                                             "slides (list, import annotations, remove)")
    psub = project.add_subparsers(dest="action", required=True)
    listing = psub.add_parser("list", help="objects per slide and class")
    listing.add_argument("project", help="the project folder (e.g. the slides' folder)")
    imp = psub.add_parser("import", help="a slide's QuPath GeoJSON or label image (our export) as training objects")
    imp.add_argument("project", help="the project folder")
    imp.add_argument("slide", help="the slide the annotations were made on")
    imp.add_argument("annotations", nargs="+", help="GeoJSON (ours or QuPath's) or label TIFF (ours) of that slide")
    imp.add_argument("--classes", nargs="+", default=None, help="import only these classes")
    imp.add_argument("--model", default="vit_t", help="the annotator's model (its embeddings are stored)")
    imp.add_argument("--device", default="auto")
    imp.add_argument("--tile-size", type=int, default=1024, help="the annotator's tile size (default 1024)")
    rm = psub.add_parser("remove", help="remove one object (--object ID) or every object of a slide (--slide NAME)")
    rm.add_argument("project", help="the project folder")
    rm.add_argument("--slide", default=None, help="a slide's name (or identity)")
    rm.add_argument("--object", default=None, help="an object's id (as in the GeoJSON export)")
    project.set_defaults(func=_cmd_project)
