"""Choose the decoder that runs every click: SAM's own, or Kim et al.'s modified decoder.

``"sam"`` is the decoder shipped inside the model's checkpoint. ``"modified"`` needs trained
weights: a decoder checkpoint file, or the one shipped for the base model in ``resources/``.
An untrained modified decoder (random new layers) only ever runs when the caller says so
explicitly (``allow_untrained=True``, used for timing and tests): its masks are noise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .decoder_checkpoint import check_base_model, read_decoder_checkpoint
from .modified_decoder import ModifiedMaskDecoder
from .registry import LoadedModel
from .residual_decoder import ResidualMaskDecoder
from .shipped import (  # noqa: F401 (imported from here by callers)
    DECODER_NAMES,
    RESOURCES,
    SHIPPED_DECODERS,
    VALID_DECODERS,
    shipped_decoder_path,
)


@dataclass
class DecoderChoice:
    """A decoder module and what it is, for reports and cache-free provenance."""

    kind: str  # the architecture: "sam", "modified", "residual" or "tissue" (``models.tissue_decoder``)
    module: torch.nn.Module
    source: str  # "checkpoint", a file path, or "untrained" ("adapted", "training": built in memory)
    trained: bool
    # the decoder as the user chose it: "sam", "md", "modified", "residual" or a checkpoint's file
    # name; empty for a decoder built in memory (adapted, being trained)
    name: str = ""
    # "sha256:<hex>" of the file the weights were read from, hashed once when it was loaded; empty
    # for SAM's own decoder (part of the model's weights) and for decoders built in memory
    weights_sha256: str = ""


def short_hash(digest: str, digits: int = 12) -> str:
    """``"sha256:<first digits>"`` of an ``"<algorithm>:<hex>"`` digest; anything else as it is."""
    algorithm, _, value = digest.partition(":")
    if value and re.fullmatch(r"[0-9a-fA-F]+", value):
        return f"{algorithm}:{value[:digits].lower()}"
    return digest


@dataclass(frozen=True)
class Provenance:
    """What drew an object: the model and its weights, the decoder as chosen and its weights."""

    model: str  # the model's name ("vit_t", a checkpoint file's stem)
    model_hash: str  # the model weights' hash, short ("sha256:6dbb90523a35")
    decoder: str  # as the user chose it: "sam", "md", "modified", "residual" or a checkpoint's file name
    decoder_kind: str  # the decoder's architecture: "sam", "modified" or "residual"
    decoder_hash: str  # the decoder file's sha256, short; empty for SAM's own decoder
    text: str  # one line for people: "MobileSAM vit_t + md decoder (decoder-md-vit_t.pt, sha256 1a2b3c4d5e6f)"

    def properties(self) -> dict:
        """The per-object properties (``annotations.objects.PROVENANCE_KEYS``) an accepted object
        carries into the GeoJSON and label-image exports (its model name is ``AnnotatedObject.model``)."""
        return {"decoder": self.decoder, "decoder_kind": self.decoder_kind, "decoder_hash": self.decoder_hash,
                "model_hash": self.model_hash}


def _model_label(model: LoadedModel) -> str:
    if model.arch == "vit_t":
        return f"MobileSAM {model.name}"
    return model.name if model.arch in model.name else f"{model.name} ({model.arch})"


def provenance(model: LoadedModel, choice: DecoderChoice) -> Provenance:
    """The provenance of ``choice`` running on ``model`` (no file is read: hashes were taken at load)."""
    if choice.name:
        decoder = choice.name
    elif choice.source in ("checkpoint", "untrained", "adapted", "training"):
        decoder = choice.kind if choice.source == "checkpoint" else f"{choice.kind} ({choice.source})"
    else:
        decoder = Path(choice.source).name
    decoder_hash = short_hash(choice.weights_sha256) if choice.weights_sha256 else ""
    if decoder_hash:
        parts = [Path(choice.source).name] if Path(choice.source).name != decoder else []
        if decoder not in DECODER_NAMES:  # a checkpoint chosen by its file: say what it is
            parts.append(f"{choice.kind} architecture")
        detail = ", ".join(parts + [decoder_hash.replace(":", " ")])
    elif choice.source == "checkpoint":
        detail = "in the model's weights"
    else:
        detail = f"{choice.source}, not saved" if choice.source in ("adapted", "training") else choice.source
    what = "SAM's own decoder" if decoder == "sam" and choice.source == "checkpoint" else f"{decoder} decoder"
    text = f"{_model_label(model)} + {what} ({detail})"
    return Provenance(model.name, short_hash(model.weights_hash), decoder, choice.kind, decoder_hash, text)


class SingleMaskDecoder(torch.nn.Module):
    """SAM's decoder answering every prompt with its single-mask output (token 0).

    A decoder fine-tuned on token 0 alone (the ``md`` scenario up to now) left SAM's three
    multimask heads and its IoU ranking untrained; asking it for three masks at the first click
    would run heads that never saw histology. Its checkpoint says ``"mask_outputs": "single"``
    (or predates that key), and inference then uses what training used."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool = False):
        return self.decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                            sparse_prompt_embeddings=sparse_prompt_embeddings,
                            dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=False)


def trained_single_mask(metadata: dict) -> bool:
    """Whether a SAM-kind decoder checkpoint was trained on the single-mask output only."""
    return metadata["decoder_kind"] == "sam" and metadata.get("mask_outputs", "single") == "single"


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\")) or text.lower().endswith((".pt", ".pth")) or text.startswith("~")


def resolve_decoder_name(decoder) -> str:
    """``decoder`` as one of ``DECODER_NAMES`` (any case) or an existing checkpoint path; an
    ``InputError`` that lists the valid choices otherwise."""
    if isinstance(decoder, Path):
        decoder = str(decoder)
    if not isinstance(decoder, str) or not decoder.strip():
        raise InputError(f"Decoder {decoder!r} is not a decoder; choose {VALID_DECODERS}.")
    if decoder.strip().lower() in DECODER_NAMES:
        return decoder.strip().lower()
    path = Path(decoder).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        raise InputError(f"Decoder {decoder!r} is a folder, not a decoder checkpoint file; choose {VALID_DECODERS}.")
    if _looks_like_path(decoder):
        raise InputError(f"Decoder checkpoint not found: {path}. Choose {VALID_DECODERS}.")
    raise InputError(f"Unknown decoder {decoder!r}; choose {VALID_DECODERS}.")


def build_decoder_from_checkpoint(model: LoadedModel, path: str | Path, name: str | None = None) -> DecoderChoice:
    """The decoder in checkpoint ``path``; ``name`` is how the user chose it (the file's name when
    not given). The file's sha256 is taken here, once, for the provenance of what it draws."""
    from .weights import file_digest

    metadata, state = read_decoder_checkpoint(path)
    try:
        digest = file_digest(path, "sha256")
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read again to hash it ({err.strerror or err}).") from err
    check_base_model(metadata, model.name, model.weights_hash, str(path))
    # a decoder adapted to a slide may carry its slide prior (``models.slide_prior``)
    prior_state = {k[len("slide_prior."):]: v for k, v in state.items() if k.startswith("slide_prior.")}
    state = {k: v for k, v in state.items() if not k.startswith("slide_prior.")}
    if metadata.get("tissue_head"):
        # a project decoder (``models.tissue_decoder``): the model's own SAM decoder plus a trained head
        from .tissue_decoder import KIND, TissueDecoder, head_from_checkpoint

        if metadata["decoder_kind"] != "sam":
            raise CheckpointError(f"{path}: a tissue head over a {metadata['decoder_kind']!r} decoder is not "
                                  f"something this version builds.")
        head = head_from_checkpoint(metadata["tissue_head"], state, str(path))
        if head.dim != int(model.sam.mask_decoder.transformer_dim):
            raise CheckpointError(f"{path}: its tissue head reads {head.dim}-channel embeddings; {model.arch} "
                                  f"makes {model.sam.mask_decoder.transformer_dim}.")
        corrected = metadata["tissue_head"].get("corrected_clicks")
        if corrected is not None and (not isinstance(corrected, int) or corrected < 0):
            raise CheckpointError(f"{path}: its tissue head's corrected_clicks {corrected!r} is not a whole number >= 0.")
        module = TissueDecoder(model.sam.mask_decoder, head, corrected).to(model.device).eval()
        for parameter in module.head.parameters():
            parameter.requires_grad_(False)
        if metadata.get("slide_prior"):
            module = _with_slide_prior(module, metadata["slide_prior"], prior_state, path, model.device)
        return DecoderChoice(KIND, module, str(path), bool(metadata["trained"]), name=name or Path(path).name,
                             weights_sha256=digest)
    if metadata["decoder_kind"] == "modified":
        module = ModifiedMaskDecoder.from_sam_decoder(model.sam.mask_decoder)
    elif metadata["decoder_kind"] == "residual":
        module = ResidualMaskDecoder.from_sam_decoder(model.sam.mask_decoder)
    else:
        import copy

        module = copy.deepcopy(model.sam.mask_decoder)
    target = module
    if isinstance(module, ResidualMaskDecoder):
        # only the correction is trained: SAM's part is always the loaded model's own decoder in
        # float32 (a float16-stored copy would no longer be exactly SAM plus the correction)
        state = {k[len("correction."):]: v for k, v in state.items() if k.startswith("correction.")}
        target = module.correction
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {metadata['decoder_kind']} decoder "
                              f"for {model.arch} ({str(err)[:300]}).") from err
    module = module.to(model.device).eval()
    if trained_single_mask(metadata):
        module = SingleMaskDecoder(module)
    if metadata.get("slide_prior"):
        module = _with_slide_prior(module, metadata["slide_prior"], prior_state, path, model.device)
    return DecoderChoice(metadata["decoder_kind"], module, str(path), bool(metadata["trained"]),
                         name=name or Path(path).name, weights_sha256=digest)


def _with_slide_prior(module: torch.nn.Module, settings, state: dict, path, device) -> torch.nn.Module:
    from .slide_prior import CONTEXT, SlidePrior, SlidePriorDecoder

    context = settings.get("context") if isinstance(settings, dict) else None
    if not isinstance(context, (list, tuple)) or list(context) != list(CONTEXT):
        raise CheckpointError(f"{path}: its slide prior was made with context {context!r}; this version "
                              f"reads context {list(CONTEXT)}.")
    try:
        prior = SlidePrior(int(state["linear.weight"].shape[1]) // len(CONTEXT))
        prior.load_state_dict(state, strict=True)
        weight = float(settings["weight"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path}: its slide prior does not load ({str(err)[:300]}).") from err
    if not (weight >= 0 and weight < float("inf")):
        raise CheckpointError(f"{path}: its slide prior's weight {weight!r} is not a finite number >= 0.")
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return SlidePriorDecoder(module, prior.to(device).eval(), weight)


def choose_decoder(model: LoadedModel, decoder: str = "sam", allow_untrained: bool = False) -> DecoderChoice:
    """``decoder`` is "sam", "modified", "md" or a path to a decoder checkpoint; anything else is an
    ``InputError`` that lists these."""
    decoder = resolve_decoder_name(decoder)
    if decoder == "sam":
        return DecoderChoice("sam", model.sam.mask_decoder, "checkpoint", True, name="sam")
    if decoder in ("residual", "md"):
        shipped = shipped_decoder_path(model.name, decoder)
        if shipped is None:
            what = "trained residual decoder" if decoder == "residual" else "fine-tuned SAM decoder (md)"
            raise CheckpointError(f"No {what} is shipped for model {model.name!r}; train one "
                                  f"(napari-sam-histo train --scenario {decoder}) and choose its file.")
        choice = build_decoder_from_checkpoint(model, shipped, name=decoder)
    elif decoder == "modified":
        shipped = shipped_decoder_path(model.name)
        if shipped is not None:
            choice = build_decoder_from_checkpoint(model, shipped, name=decoder)
        elif allow_untrained:
            module = ModifiedMaskDecoder.from_sam_decoder(model.sam.mask_decoder).eval()
            choice = DecoderChoice("modified", module, "untrained", False, name="modified")
        else:
            raise CheckpointError(
                f"No trained modified decoder is available for model {model.name!r}. Train one "
                f"(napari-sam-histo train) and choose its file, or use the SAM decoder."
            )
    else:
        choice = build_decoder_from_checkpoint(model, decoder)
    if not choice.trained and not allow_untrained:
        raise CheckpointError(f"The decoder in {choice.source} is marked untrained; it would give "
                              f"random masks, so it is not used.")
    return choice
