"""``napari-sam-histo perf``: what a click costs, measured the way the user runs it.

For one model on one device: encoder seconds per 1024x1024 tile, twice and in the same run (the
runs interleaved, medians): the raw float32 eager forward of the encoder module on a prepared
input, and the default path end to end (``Predictor.embedding_for`` with an empty cache: read from
the slide source, preprocess, encode, with the optimized encoder where ``encoder_mode="auto"``
picks it), their ratio, and how long building the optimized encoder took (paid once per model);
per-click latency p50/p95 over
>= 20 clicks through ``ClickSession.add_click`` (prompt encoder, decoder, upscaling to the tile,
threshold) for SAM's decoder, each decoder shipped for the model and the modified decoder, on the
product's path (the CPU runtime where ``decoder_mode="auto"`` picks it) and, click by click in
turn, on the same decoder module in raw PyTorch float32 and, where the product's path is the CPU runtime,
in PyTorch at the product's precision (the path the runtime replaced: a bfloat16 copy of the module
on a CPU with native bfloat16); the forward time of the decoder inside
those same clicks (``Predictor.last_decoder_s``); their ratio, i.e. what the click adds around the
network; and how often the encoder ran for one tile over all those clicks and a revisit (1 is
right). The report names the CPU, its instruction sets, and each path's backend and precision.
The modified decoder is timed with untrained new layers when no trained one exists: its speed
does not depend on its weights. Every timed call starts ``PAUSE_S`` (``--pause``) after the one
before, as a user's clicks do.
"""

from __future__ import annotations

import time

import numpy as np
import torch

TILE = 1024
# Each timed call (every path's) starts this long after the last one ended, by default: a user's
# clicks are far further apart, and PyTorch's OpenMP threads spin for a while after their work
# before they sleep, competing with whatever runs next on the same cores (back to back, SAM's bf16
# click measured ~24 ms against ~18 ms with the pause on 2 AMD EPYC cores: docs/cpu-runtime.md)
PAUSE_S = 0.1


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


def _time_decoders(pairs: dict, box, embedding, clicks, pause_s: float = PAUSE_S) -> dict:
    """For each decoder name, ``(product predictor, raw PyTorch fp32 predictor, PyTorch predictor at
    the product's precision or None)`` on one decoder module: click latency through
    ``ClickSession.add_click`` and the decoder's own forward inside each click, every path taking
    the same clicks in turn (click by click), so that a busy machine slows all of them alike; after
    three warm-up clicks each, and each timed click ``pause_s`` after the one before."""
    from .engine.session import ClickSession

    sessions = {(name, which): ClickSession(predictor, box, embedding)
                for name, paths in pairs.items()
                for which, predictor in zip(("product", "raw", "pytorch"), paths) if predictor is not None}
    for session in sessions.values():
        for x, y, positive in clicks[:3]:  # warm-up: first calls allocate and pick kernels
            session.add_click(x, y, positive)
        session.reset()
    times = {key: ([], []) for key in sessions}
    for x, y, positive in clicks:
        for key, session in sessions.items():
            time.sleep(pause_s)
            t0 = time.perf_counter()
            session.add_click(x, y, positive)
            times[key][0].append(time.perf_counter() - t0)
            times[key][1].append(session.predictor.last_decoder_s)  # the forward inside that very click
    results = {}
    for name, (product, _raw, pytorch) in pairs.items():
        clicks_s, forward_s = times[(name, "product")]
        raw_clicks_s, raw_forward_s = times[(name, "raw")]
        same_clicks_s = times[(name, "pytorch")][0] if pytorch is not None else None
        results[name] = {
            "backend": product.decoder_backend if product.last_decoder_path == "runtime" else "pytorch",
            "precision": product.decoder_precision,
            "click_p50_s": _percentile(clicks_s, 50), "click_p95_s": _percentile(clicks_s, 95),
            "raw_p50_s": _percentile(forward_s, 50),
            "pytorch_fp32_click_p50_s": _percentile(raw_clicks_s, 50),
            "pytorch_fp32_raw_p50_s": _percentile(raw_forward_s, 50),
            "pytorch_click_p50_s": None if same_clicks_s is None else _percentile(same_clicks_s, 50),
            "trained": product.decoder.trained,
        }
    return results


def _time_encoder(predictor, source, box, runs: int, pause_s: float = PAUSE_S) -> dict:
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
            time.sleep(pause_s)
            t0 = time.perf_counter()
            module(pixels)
            sync()
            raw_times.append(time.perf_counter() - t0)

    def end_to_end() -> None:
        predictor.cache = EmbeddingCache()  # empty: the tile is really read and encoded
        time.sleep(pause_s)
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


def _decoder_names(loaded) -> list[str]:
    """SAM's own decoder and every decoder shipped for the model; the modified one always (untrained
    when none is shipped: its speed does not depend on its weights)."""
    from .models.shipped import shipped_decoders

    names = shipped_decoders(loaded.name)
    return names if "modified" in names else names + ["modified"]


def cpu_name() -> str:
    """The CPU's model name, as ``lscpu`` says it."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_perf(model: str = "vit_t", device: str = "auto", clicks: int = 24, random_weights: bool = False,
             encoder_runs: int = 3, precision: str = "auto", pause_s: float | None = None) -> dict:
    """The report (see the module); ``precision`` is the decoders' (``Predictor``'s); each timed call
    starts ``pause_s`` (None: ``PAUSE_S``) after the one before."""
    pause_s = PAUSE_S if pause_s is None else max(float(pause_s), 0.0)
    from .engine.embedding_cache import EmbeddingCache
    from .engine.predictor import Predictor
    from .models import cpu_runtime
    from .models.decoders import choose_decoder
    from .models.registry import get_spec, load_model, random_model
    from .slides.boxes import TileBox
    from .slides.reader import from_array

    clicks = max(int(clicks), 20)
    loaded = random_model(get_spec(model).arch if not model.startswith("tiny") else "tiny", device) \
        if random_weights else load_model(model, device)
    source = from_array(_synthetic_tile(), "synthetic-tile")
    box = TileBox(0, 0, 0, TILE, TILE)
    cache = EmbeddingCache()
    sam_predictor = Predictor(loaded, "sam", cache=cache, precision=precision)
    encoder = _time_encoder(sam_predictor, source, box, encoder_runs, pause_s)

    calls_before = sam_predictor.encoder_calls
    embedding = sam_predictor.embedding_for(source, box)
    script = _click_script(clicks)
    pairs, build_s = {}, {}
    for name in _decoder_names(loaded):
        choice = sam_predictor.decoder if name == "sam" else choose_decoder(loaded, name, allow_untrained=True)
        product = sam_predictor if name == "sam" else Predictor(loaded, choice, cache=cache, precision=precision)
        started = time.perf_counter()
        product.prepare_decoder(background=False)
        build_s[name] = time.perf_counter() - started if product.decoder_mode == "runtime" else 0.0
        raw = Predictor(loaded, choice, cache=cache, precision="fp32", decoder_mode="pytorch", encoder_mode="eager")
        same = Predictor(loaded, choice, cache=cache, precision="bf16" if product.decoder_bf16 else "fp32",
                         decoder_mode="pytorch", encoder_mode="eager") if product.decoder_mode == "runtime" else None
        pairs[name] = (product, raw, same)
    decoders = _time_decoders(pairs, box, embedding, script, pause_s)
    for name, timing in decoders.items():
        timing["build_s"] = build_s[name]
    sam_predictor.embedding_for(source, box)  # a revisit must not run the encoder again
    encoder_calls_per_tile = sam_predictor.encoder_calls - calls_before

    sam, modified = decoders["sam"], decoders["modified"]
    return {
        "model": loaded.name,
        "weights": "random-init" if random_weights else loaded.weights_hash,
        "device": str(loaded.device),
        "cpu": cpu_name(),
        "cpu_features": cpu_runtime.cpu_features(),
        "torch_threads": torch.get_num_threads(),
        "decoder_precision": sam_predictor.decoder_precision,
        "clicks": clicks,
        "pause_s": pause_s,
        "encoder_s_per_tile": encoder["end_to_end_s"],
        "encoder_raw_fp32_s_per_tile": encoder["raw_s"],
        "encoder_speedup_vs_raw": encoder["raw_s"] / encoder["end_to_end_s"],
        "encoder_mode": sam_predictor.encoder_mode,
        "encoder_path": sam_predictor.last_encoder_path,
        "encoder_backend": sam_predictor.encoder_backend,
        "encoder_precision": "bf16" if sam_predictor.encoder_bf16 else "fp32",
        "encoder_build_s": encoder["build_s"],
        "decoders": decoders,
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
    lines = [
        (f"model {r['model']} ({r['weights']}) on {r['device']}: {r['cpu']} ({r['cpu_features']}), "
         f"{r['torch_threads']} threads, {r['clicks']} clicks per decoder, each call {r['pause_s']:g} s after the "
         "one before"),
        (f"encoder, one 1024x1024 tile      {r['encoder_s_per_tile']:7.2f} s  end to end (read + preprocess + "
         f"{r['encoder_mode']} {r['encoder_precision']} encoder, {r['encoder_backend']})"),
        f"raw fp32 eager encoder forward   {r['encoder_raw_fp32_s_per_tile']:7.2f} s  "
        f"-> speed-up end to end over raw: {r['encoder_speedup_vs_raw']:.2f}x"
        + (f"; optimized encoder built once in {r['encoder_build_s']:.1f} s" if r["encoder_mode"] == "optimized" else ""),
        f"encoder calls for 1 tile, {r['clicks']} clicks + revisit: {r['encoder_calls_per_tile']}",
        (f"{'decoder':10} {'backend':18} {'prec':4} {'click p50':>10} {'click p95':>10} {'raw p50':>10} "
         f"{'click/raw':>9} {'fp32 click':>10} {'fp32 raw':>10} {'vs fp32':>7} {'torch click':>11} {'vs torch':>8}"),
    ]
    for name, d in r["decoders"].items():
        lines.append(
            f"{name:10} {d['backend']:18} {d['precision']:4} {ms(d['click_p50_s'])} {ms(d['click_p95_s'])} "
            f"{ms(d['raw_p50_s'])} {d['click_p50_s'] / d['raw_p50_s']:9.2f} {ms(d['pytorch_fp32_click_p50_s'])} "
            f"{ms(d['pytorch_fp32_raw_p50_s'])} {d['pytorch_fp32_click_p50_s'] / d['click_p50_s']:6.2f}x"
            + (f" {ms(d['pytorch_click_p50_s'])}  {d['pytorch_click_p50_s'] / d['click_p50_s']:6.2f}x"
               if d.get("pytorch_click_p50_s") else f" {'-':>11} {'-':>8}")
            + ("" if d["trained"] else "   (untrained layers: timing only)"))
    lines.append("fp32 click / fp32 raw: the same clicks through the decoder module in PyTorch float32, taken in "
                 "turn with the product's path; vs fp32: click p50 speed-up over it")
    lines.append("torch click: the same clicks through the module in PyTorch at the product's precision (the "
                 "path the runtime replaces); vs torch: click p50 speed-up over it")
    return "\n".join(lines)
