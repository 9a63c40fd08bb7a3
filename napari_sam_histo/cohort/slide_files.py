"""The slide files a cohort command was given: files as named, folders searched (recursively) for
files with a slide's suffix. DICOM (.dcm) is taken only when named, since one DICOM slide is many
files; a path that is missing, or a folder with no slide, is reported, never fatal to the rest."""

from __future__ import annotations

from pathlib import Path

SEARCHED_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms")


def find_slides(paths) -> tuple[list[Path], list[str]]:
    """(slide files in the order given, folders sorted by name; problems, one line each)."""
    found: list[Path] = []
    problems: list[str] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in SEARCHED_SUFFIXES)
            if not inside:
                problems.append(f"{path}: no slide files in this folder ({', '.join(SEARCHED_SUFFIXES)})")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    unique = list({p.resolve(): p.absolute() for p in found}.values())  # absolute: workers open them too
    return unique, problems
