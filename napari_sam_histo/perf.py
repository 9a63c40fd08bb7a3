"""``napari-sam-histo perf``: what a click costs, measured the way the user runs it.

For one model on one device: encoder seconds per 1024x1024 tile, twice and in the same run (the
runs interleaved, medians): the raw float32 eager forward of the encoder module on a prepared
input, and the default path end to end (``Predictor.embedding_for`` with an empty cache: read from
the slide source, preprocess, encode, with the optimized encoder where ``encoder_mode="auto"``
picks it), their ratio, and how long building the optimized encoder took (paid once per model);
per-click latency p50/p95 over
>= 20 clicks through ``ClickSession.add_click`` (prompt encoder, decoder, upscaling to the tile,
threshold) for SAM's decoder and for the modified decoder; the raw forward time of the same
decoder module inside those same clicks (``Predictor.last_decoder_s``); their ratio, i.e. what the
click adds around the network; and how often the encoder ran
for one tile over all those clicks and a revisit (1 is right). The modified decoder is timed with
untrained new layers when no trained one exists: its speed does not depend on its weights.
"""

from __future__ import annotations

import time

import numpy as np
import torch

TILE = 1024


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _synthetic_tile(seed: int = 0) -> np.ndarray:
    """H&E-like colours with structure, so the decoder sees a real-looking embedding."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    blobs = np.sin(xx / 37.0) * np.cos(yy / 53.0) + 0.3 * rng.standard_normal((TILE, TILE))
    pink, purple = np.array([230, 160, 200]), np.array([110, 60, 150])
    weight = (blobs > 0)[..., None]
    return np.where(weight, purple, pink).astype(np.uint8)


def _click_script(n: int, seed: int = 1) -> list[tuple[float, float, bool]]:
    rng = np.random.default_rng(seed)
    return [(float(rng.integers(0, TILE)), float(rng.integers(0, TILE)), i % 3 != 2) for i in range(n)]


def _time_decoder(predictor, box, embedding, clicks) -> dict:
    from .engine.session import ClickSession

    session = ClickSession(predictor, box, embedding)
    for x, y, positive in clicks[:3]:  # warm-up: first calls allocate and pick kernels
        session.add_click(x, y, positive)
    session.reset()
    click_times, raw_times = [], []
    for x, y, positive in clicks:
        t0 = time.perf_counter()
        session.add_click(x, y, positive)
        click_times.append(time.perf_counter() - t0)
        raw_times.append(predictor.last_decoder_s)  # the decoder's forward inside that very click
    return {
        "click_p50_s": _percentile(click_times, 50),
        "click_p95_s": _percentile(click_times, 95),
        "raw_p50_s": _percentile(raw_times, 50),
        "trained": predictor.decoder.trained,
    }


def _time_encoder(predictor, source, box, runs: int) -> dict:
    """Medians of the raw fp32 eager encoder forward and of the default path end to end, run
    alternately so that a busy machine slows both alike; after one warm-up each (and the build of
    the optimized encoder, timed on its own)."""
    from .engine.embedding_cache import EmbeddingCache

    started = time.perf_counter()
    predictor.prepare_encoder(background=False)
    build_s = time.perf_counter() - started if predictor.encoder_mode == "optimized" else 0.0
    module = predictor.sam.image_encoder
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)

    def raw() -> None:
        with torch.inference_mode():
            pixels = predictor.preprocess(source.read_region(box))[0]
            sync()
            t0 = time.perf_counter()
            module(pixels)
            sync()
            raw_times.append(time.perf_counter() - t0)

    def end_to_end() -> None:
        predictor.cache = EmbeddingCache()  # empty: the tile is really read and encoded
        t0 = time.perf_counter()
        predictor.embedding_for(source, box)
        sync()
        e2e_times.append(time.perf_counter() - t0)

    cache = predictor.cache
    raw_times: list[float] = []
    e2e_times: list[float] = []
    try:
        for _ in range(max(runs, 1) + 1):  # the first run of each is a warm-up, left out
            raw()
            end_to_end()
    finally:
        predictor.cache = cache
    return {"raw_s": float(np.median(raw_times[1:])), "end_to_end_s": float(np.median(e2e_times[1:])),
            "build_s": build_s}


def run_perf(model: str = "vit_t", device: str = "auto", clicks: int = 24, random_weights: bool = False,
             encoder_runs: int = 3) -> dict:
    from .engine.embedding_cache import EmbeddingCache
    from .engine.predictor import Predictor
    from .engine.tiles import TileBox
    from .models.decoders import choose_decoder
    from .models.registry import get_spec, load_model, random_model
    from .slides.reader import from_array

    clicks = max(int(clicks), 20)
    loaded = random_model(get_spec(model).arch if not model.startswith("tiny") else "tiny", device) \
        if random_weights else load_model(model, device)
    source = from_array(_synthetic_tile(), "synthetic-tile")
    box = TileBox(0, 0, 0, TILE, TILE)
    cache = EmbeddingCache()
    sam_predictor = Predictor(loaded, "sam", cache=cache)
    encoder = _time_encoder(sam_predictor, source, box, encoder_runs)

    calls_before = sam_predictor.encoder_calls
    embedding = sam_predictor.embedding_for(source, box)
    script = _click_script(clicks)
    sam = _time_decoder(sam_predictor, box, embedding, script)
    sam_predictor.embedding_for(source, box)  # a revisit must not run the encoder again
    encoder_calls_per_tile = sam_predictor.encoder_calls - calls_before

    modified_choice = choose_decoder(loaded, "modified", allow_untrained=True)
    modified_predictor = Predictor(loaded, modified_choice, cache=cache)
    modified = _time_decoder(modified_predictor, box, embedding, script)

    return {
        "model": loaded.name,
        "weights": "random-init" if random_weights else loaded.weights_hash,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "decoder_precision": "bf16" if sam_predictor.decoder_bf16 else "fp32",
        "clicks": clicks,
        "encoder_s_per_tile": encoder["end_to_end_s"],
        "encoder_raw_fp32_s_per_tile": encoder["raw_s"],
        "encoder_speedup_vs_raw": encoder["raw_s"] / encoder["end_to_end_s"],
        "encoder_mode": sam_predictor.encoder_mode,
        "encoder_path": sam_predictor.last_encoder_path,
        "encoder_precision": "bf16" if sam_predictor.encoder_bf16 else "fp32",
        "encoder_build_s": encoder["build_s"],
        "sam_decoder_click_p50_s": sam["click_p50_s"],
        "sam_decoder_click_p95_s": sam["click_p95_s"],
        "sam_decoder_raw_p50_s": sam["raw_p50_s"],
        "sam_decoder_click_to_raw": sam["click_p50_s"] / sam["raw_p50_s"],
        "modified_decoder_click_p50_s": modified["click_p50_s"],
        "modified_decoder_click_p95_s": modified["click_p95_s"],
        "modified_decoder_raw_p50_s": modified["raw_p50_s"],
        "modified_decoder_click_to_raw": modified["click_p50_s"] / modified["raw_p50_s"],
        "modified_decoder_trained": modified["trained"],
        "encoder_calls_per_tile": encoder_calls_per_tile,
    }


def format_report(r: dict) -> str:
    ms = lambda s: f"{1000 * s:7.1f} ms"  # noqa: E731
    return "\n".join([
        f"model {r['model']} ({r['weights']}) on {r['device']}, {r['torch_threads']} threads, "
        f"decoder precision {r['decoder_precision']}, {r['clicks']} clicks per decoder",
        f"encoder, one 1024x1024 tile      {r['encoder_s_per_tile']:7.2f} s  end to end (read + preprocess + "
        f"{r['encoder_mode']} {r['encoder_precision']} encoder)",
        f"raw fp32 eager encoder forward   {r['encoder_raw_fp32_s_per_tile']:7.2f} s  "
        f"-> speed-up end to end over raw: {r['encoder_speedup_vs_raw']:.2f}x"
        + (f"; optimized encoder built once in {r['encoder_build_s']:.1f} s" if r["encoder_mode"] == "optimized" else ""),
        f"encoder calls for 1 tile, {r['clicks']} clicks + revisit: {r['encoder_calls_per_tile']}",
        f"{'decoder':10} {'click p50':>10} {'click p95':>10} {'raw p50':>10} {'click/raw':>9}",
        f"{'SAM':10} {ms(r['sam_decoder_click_p50_s'])} {ms(r['sam_decoder_click_p95_s'])} "
        f"{ms(r['sam_decoder_raw_p50_s'])} {r['sam_decoder_click_to_raw']:9.2f}",
        f"{'modified':10} {ms(r['modified_decoder_click_p50_s'])} {ms(r['modified_decoder_click_p95_s'])} "
        f"{ms(r['modified_decoder_raw_p50_s'])} {r['modified_decoder_click_to_raw']:9.2f}"
        + ("" if r["modified_decoder_trained"] else "   (untrained layers: timing only)"),
    ])
