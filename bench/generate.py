"""Generation throughput: a plain diffusers SDXL base+refiner loop against Atelier's engine.

One process, the same prompts and seeds for every variant:

  plain           the diffusers SDXL guide's ensemble-of-experts loop, one image per call:
                  base(prompt, num_inference_steps, denoising_end, output_type="latent") then
                  refiner(prompt, num_inference_steps, denoising_start, image=latents)
  engine          sdxl_core.SDXLEngine: batches, per-image generators, channels_last and fused QKV
                  projections where asked, SDPA attention, models resident
  engine+compile  the same engine with torch.compile (static shapes, warmed up outside the timing);
                  CUDA only, skipped with a message elsewhere

Models: the tiny test models (default), or with --full-size-random the full SDXL 1.0 base and
refiner architectures built from their published configs with random weights directly on the device
(no download; timings are real, images are noise). Prints a table; --out appends it to a markdown file.

  python bench/generate.py                                   # CPU, tiny models
  python bench/generate.py --full-size-random --device cuda --dtype bfloat16 --size 1024 --steps 40 \\
      --split 0.8 --guidance 5 --images 8 --batch 4 --compile --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sdxl_core.engine import EngineConfig, ImageRequest, SDXLEngine, stage_steps  # noqa: E402
from sdxl_core.seeds import image_seed  # noqa: E402

logger = logging.getLogger("bench.generate")

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "a red leather armchair in a sunlit loft, product photo",
    "a bowl of ramen with a soft-boiled egg, studio lighting",
    "a lighthouse on a cliff during a storm, oil painting",
    "a pair of white running shoes on a concrete floor",
    "a watercolor fox in a snowy forest",
    "a ceramic teapot on a wooden table, soft light",
    "a city street at night in the rain, neon reflections",
]
PROMPT_SEED = 20240


@dataclass
class Row:
    variant: str
    images: int
    seconds: float  # median over the repeats
    peak_rss_gib: float = 0.0
    peak_cuda_gib: float | None = None
    tflops: float | None = None
    fraction_of_matmul: float | None = None
    note: str = ""
    best_seconds: float | None = None  # fastest of the repeats (a shared machine's noise only slows)

    @classmethod
    def from_times(cls, variant: str, images: int, times: list[float], **kwargs: Any) -> Row:
        """Median of the repeats as the figure, the fastest kept beside it."""
        return cls(variant, images, statistics.median(times), best_seconds=min(times), **kwargs)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def s_per_image(self) -> float:
        return self.seconds / self.images


# ---------------------------------------------------------------- measurement helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peaks(device: torch.device) -> None:
    """Reset the peak RSS (Linux: VmHWM via clear_refs) and the CUDA allocator's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_rss_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_cuda_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """The card's bf16 matrix-product rate, measured here: mean of `repeats` n^3 products, random data."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


def count_flops_per_image(
    base, refiner, request: ImageRequest, base_steps: int, refiner_steps: int
) -> dict[str, float]:
    """FLOPs of one image, counted with FlopCounterMode once per stage.

    One image is generated with 1 base and 1 refiner step under the counter (text encoders, one
    UNet forward per stage, VAE decode); each stage's UNet forward is counted again alone from its
    captured inputs, and multiplied by the stage's remaining steps.
    """
    captured: dict[str, tuple[tuple, dict]] = {}

    def capture(name: str):
        def hook(module, args, kwargs):
            captured.setdefault(name, (args, kwargs))

        return hook

    handles = [
        base.unet.register_forward_pre_hook(capture("base_unet"), with_kwargs=True),
        refiner.unet.register_forward_pre_hook(capture("refiner_unet"), with_kwargs=True),
    ]
    gen = [torch.Generator("cpu").manual_seed(request.seed)]
    common = {"prompt": [request.prompt], "guidance_scale": request.guidance_scale, "generator": gen}
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as total:
            latents = base(
                **common,
                width=request.width,
                height=request.height,
                num_inference_steps=2,
                denoising_end=0.5,
                output_type="latent",
            ).images
            refiner(**common, image=latents, num_inference_steps=2, denoising_start=0.5, output_type="pt")
    finally:
        for handle in handles:
            handle.remove()
    per_forward = {}
    for name, module in (("base_unet", base.unet), ("refiner_unet", refiner.unet)):
        args, kwargs = captured[name]
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(*args, **kwargs)
        per_forward[name] = counter.get_total_flops()
    one_step_each = total.get_total_flops()
    image = (
        one_step_each + (base_steps - 1) * per_forward["base_unet"] + (refiner_steps - 1) * per_forward["refiner_unet"]
    )
    return {
        "per_image": float(image),
        "base_unet_forward": float(per_forward["base_unet"]),
        "refiner_unet_forward": float(per_forward["refiner_unet"]),
        "other": float(one_step_each - per_forward["base_unet"] - per_forward["refiner_unet"]),
    }


# ---------------------------------------------------------------- models
def load_pipelines(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(base, refiner, engine_source): random-weight pipelines on the device, or the tiny folders."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    if args.full_size_random or args.random_arch:
        from sdxl_core.build import build_random_pipelines
        from sdxl_core.configs import SDXL_1_0, SDXL_TINY

        arch = SDXL_1_0 if args.full_size_random else SDXL_TINY
        base, refiner = build_random_pipelines(arch, seed=0, device=device, dtype=dtype)
        return base, refiner, None
    from sdxl_core.tiny import ensure_tiny_models

    base_dir, refiner_dir = ensure_tiny_models(Path(args.models))
    # As the diffusers SDXL guide loads them (the watermarker off: Atelier watermarks downstream,
    # so both variants do the same work).
    base = StableDiffusionXLPipeline.from_pretrained(base_dir, dtype=dtype, add_watermarker=False)
    base.to(device)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        refiner_dir, text_encoder_2=base.text_encoder_2, vae=base.vae, dtype=dtype, add_watermarker=False
    )
    refiner.to(device)
    return base, refiner, (base_dir, refiner_dir)


def describe_params(base, refiner) -> dict[str, float]:
    def count(m) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e9

    return {
        "base_unet_B": count(base.unet),
        "refiner_unet_B": count(refiner.unet),
        "text_encoder_B": count(base.text_encoder),
        "text_encoder_2_B": count(base.text_encoder_2),
        "vae_B": count(base.vae),
    }


# ---------------------------------------------------------------- variants
def plain_image_fn(base, refiner):
    """One image as the diffusers SDXL guide makes it (base to latents, refiner from them)."""

    def one(r: ImageRequest):
        generator = torch.Generator("cpu").manual_seed(r.seed)
        image = base(
            prompt=r.prompt,
            num_inference_steps=r.steps,
            denoising_end=r.refiner_split,
            guidance_scale=r.guidance_scale,
            width=r.width,
            height=r.height,
            output_type="latent",
            generator=generator,
        ).images
        return refiner(
            prompt=r.prompt,
            num_inference_steps=r.steps,
            denoising_start=r.refiner_split,
            guidance_scale=r.guidance_scale,
            image=image,
            generator=generator,
        ).images[0]

    return one


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def run_plain(
    base, refiner, requests: list[ImageRequest], warmup: int, device: torch.device, repeats: int = 1
) -> tuple[list[float], list]:
    """The diffusers SDXL guide's loop, one image per call; returns (seconds of each repeat, outputs)."""
    one = plain_image_fn(base, refiner)
    for i in range(warmup):
        one(requests[i % len(requests)])
    outputs: list = []
    times = [_time(lambda: outputs.append([one(r) for r in requests]), device) for _ in range(repeats)]
    return times, outputs[-1]


def run_engine(
    engine: SDXLEngine, requests: list[ImageRequest], device: torch.device, repeats: int = 1
) -> tuple[list[float], list]:
    """Warm up, then time ``engine.generate(requests)``; returns (seconds of each repeat, outputs)."""
    r = requests[0]
    # Warm-up at the timed shape and batch size (compiles when compile=True), with 2 steps: the
    # compiled graphs do not depend on the step count.
    engine.warm_up(r.width, r.height, 2, r.guidance_scale, 0.5)
    outputs: list = []
    times = [_time(lambda: outputs.append(engine.generate(requests)), device) for _ in range(repeats)]
    return times, outputs[-1]


# ---------------------------------------------------------------- output
def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def render(rows: list[Row], header: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in header.items())
    lines = [
        f"### {header['date']}: {header['machine']}",
        "",
        settings,
        "",
        "| variant | images | images/s | s/image | best s/image | peak RSS GiB | peak CUDA GiB | TFLOP/s "
        "| of bf16 matmul | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        cuda = f"{r.peak_cuda_gib:.1f}" if r.peak_cuda_gib is not None else "-"
        tflops = f"{r.tflops:.0f}" if r.tflops is not None else "-"
        frac = f"{r.fraction_of_matmul:.0%}" if r.fraction_of_matmul is not None else "-"
        best = f"{r.best_seconds / r.images:.3f}" if r.best_seconds is not None else "-"
        lines.append(
            f"| {r.variant} | {r.images} | {r.images_per_s:.3f} | {r.s_per_image:.3f} | {best} | {r.peak_rss_gib:.2f} "
            f"| {cuda} | {tflops} | {frac} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


SECTION = "## bench/generate.py"


def append_results(path: Path, block: str) -> None:
    """Append ``block`` at the end of the generate section of ``path`` (created if missing)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
        path.write_text(text + block)
        return
    start = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt == -1 else nxt + 1
    head, tail = text[:end].rstrip("\n"), text[end:]
    path.write_text(head + "\n\n" + block + ("\n" + tail if tail else ""))


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size-random", action="store_true", help="full SDXL 1.0 architectures, random weights")
    p.add_argument("--random-arch", action="store_true", help="tiny architectures built in memory (tests the path)")
    p.add_argument("--models", default=str(REPO / ".atelier" / "bench-models"), help="where tiny models are built")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--split", type=float, default=0.8)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--images", type=int, default=8, help="timed images per engine variant")
    p.add_argument("--plain-images", type=int, default=None, help="timed images for plain (default: --images)")
    p.add_argument("--warmup-seconds", type=float, default=0.0, help="run both variants this long before timing")
    p.add_argument("--repeats", type=int, default=1, help="timed loops per variant; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="plain warm-up images (the engine warms up one batch)")
    p.add_argument("--batch", type=int, default=4, help="engine max batch size")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time engine+compile (CUDA only)")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--compile-deadline", type=float, default=None, help="skip compile if past this many seconds")
    p.add_argument("--no-fuse-qkv", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--check-invariance", action="store_true", help="regenerate image 0 alone and compare latents")
    p.add_argument("--flops", action="store_true", help="count FLOPs (default on CUDA)")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--out", default=None, help="append the table to this markdown file")
    p.add_argument("--json", default=None, help="write rows and settings as JSON here")
    p.add_argument("--smoke", action="store_true", help="tiny, quick settings to check the whole script path")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.steps, args.images, args.batch = 256, 4, 3, 2
        args.plain_images = args.plain_images or 2
        args.flops = True
        args.check_invariance = True
    return args


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def elapsed() -> str:
        return f"[{time.perf_counter() - t0:6.1f}s]"

    matmul = None
    if device.type == "cuda":
        matmul = measure_matmul_tflops(device)
        logger.info("%s %s: bf16 8192^3 matmul %.0f TFLOP/s", elapsed(), torch.cuda.get_device_name(device), matmul)

    base, refiner, folders = load_pipelines(args, device, dtype)
    base.set_progress_bar_config(disable=True)
    refiner.set_progress_bar_config(disable=True)
    params = describe_params(base, refiner)
    logger.info("%s models ready: %s", elapsed(), {k: round(v, 4) for k, v in params.items()})

    requests = [
        ImageRequest(
            prompt=PROMPTS[i % len(PROMPTS)],
            negative_prompt="",
            seed=image_seed(PROMPT_SEED, i),
            width=args.size,
            height=args.size,
            steps=args.steps,
            guidance_scale=args.guidance,
            refiner_split=args.split,
        )
        for i in range(args.images)
    ]
    plain_requests = requests[: args.plain_images or args.images]
    config = EngineConfig(
        base=str(folders[0]) if folders else "random:" + ("sdxl-1.0" if args.full_size_random else "sdxl-tiny"),
        refiner=str(folders[1]) if folders else "random",
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.batch,
        channels_last=not args.no_channels_last and device.type == "cuda",
        fuse_qkv=not args.no_fuse_qkv,
        hash_cache=str(Path(args.models) / "weight-hashes.json"),
    )

    flops = None
    rows: list[Row] = []

    def add(row: Row) -> None:
        if flops is not None:
            row.tflops = flops["per_image"] * row.images_per_s / 1e12
            if matmul:
                row.fraction_of_matmul = row.tflops / matmul
        rows.append(row)
        logger.info("%s %s: %.3f images/s, %.3f s/image", elapsed(), row.variant, row.images_per_s, row.s_per_image)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"header": header, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1)
            )

    # Counted on the plain pipelines (untouched by the engine's options); the same math for every variant.
    steps = stage_steps(base.scheduler, args.steps, args.split)
    if args.flops or device.type == "cuda":
        flops = count_flops_per_image(base, refiner, requests[0], *steps)
        logger.info(
            "%s FLOPs per image %.1f T (base unet fwd %.2f T, refiner unet fwd %.2f T, other %.2f T), steps %s",
            elapsed(),
            flops["per_image"] / 1e12,
            flops["base_unet_forward"] / 1e12,
            flops["refiner_unet_forward"] / 1e12,
            flops["other"] / 1e12,
            steps,
        )

    header: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_name(device),
        "models": "SDXL 1.0 architectures, random weights" if args.full_size_random else "tiny SDXL-architecture",
        "size": f"{args.size}x{args.size}",
        "steps": f"{args.steps} ({steps[0]} base + {steps[1]} refiner)",
        "split": args.split,
        "guidance": args.guidance,
        "dtype": args.dtype,
        "device": args.device,
        "engine batch": args.batch,
        "repeats": args.repeats,
        "channels_last": config.channels_last,
        "fuse_qkv": config.fuse_qkv,
        "torch": torch.__version__,
        "base unet params": f"{params['base_unet_B']:.3f}B",
        "refiner unet params": f"{params['refiner_unet_B']:.3f}B",
    }
    if flops is not None:
        header["TFLOP per image"] = f"{flops['per_image'] / 1e12:.1f}"
    if matmul is not None:
        header["measured bf16 matmul TFLOP/s"] = f"{matmul:.0f}"

    plain_note = f"1 image per call, {args.warmup} warm-up, median of {args.repeats}"
    engine_note = f"batches of {args.batch}, median of {args.repeats}"
    if folders and not args.skip_plain:
        # Separate copies of the models: both variants stay resident and are timed in turn, so a
        # slow phase of a shared machine hits both alike.
        engine = SDXLEngine.load(config)
        plain_one = plain_image_fn(base, refiner)
        for i in range(args.warmup):
            plain_one(plain_requests[i % len(plain_requests)])
        r0 = requests[0]
        engine.warm_up(r0.width, r0.height, 2, r0.guidance_scale, 0.5)
        spin_until = time.perf_counter() + args.warmup_seconds
        while time.perf_counter() < spin_until:
            plain_one(plain_requests[0])
            engine.generate(requests[:1])
        plain_times, engine_times = [], []
        for _ in range(args.repeats):
            plain_times.append(_time(lambda: [plain_one(r) for r in plain_requests], device))
            engine_times.append(_time(lambda: engine.generate(requests), device))
        outputs = engine.generate(requests)
        peak = _peak_rss_gib()
        add(
            Row.from_times(
                "plain diffusers loop",
                len(plain_requests),
                plain_times,
                peak_rss_gib=peak,
                peak_cuda_gib=_peak_cuda_gib(device),
                note=plain_note + ", interleaved with engine; RSS of both",
            )
        )
        add(
            Row.from_times(
                "engine",
                len(requests),
                engine_times,
                peak_rss_gib=peak,
                peak_cuda_gib=_peak_cuda_gib(device),
                note=f"{engine_note}, {engine.options['attention']}, interleaved",
            )
        )
        logger.info("%s timings plain %s engine %s", elapsed(), plain_times, engine_times)
    else:
        # (a) plain diffusers loop; runs first, on the untouched (shared) modules.
        if not args.skip_plain:
            _reset_peaks(device)
            times, _ = run_plain(base, refiner, plain_requests, args.warmup, device, args.repeats)
            add(
                Row.from_times(
                    "plain diffusers loop",
                    len(plain_requests),
                    times,
                    peak_rss_gib=_peak_rss_gib(),
                    peak_cuda_gib=_peak_cuda_gib(device),
                    note=plain_note,
                )
            )
        # (b) the engine, on the same modules (it applies its options to them).
        _reset_peaks(device)
        engine = SDXLEngine.load(config) if folders else SDXLEngine.from_pipelines(config, base, refiner)
        times, outputs = run_engine(engine, requests, device, args.repeats)
        add(
            Row.from_times(
                "engine",
                len(requests),
                times,
                peak_rss_gib=_peak_rss_gib(),
                peak_cuda_gib=_peak_cuda_gib(device),
                note=f"{engine_note}, {engine.options['attention']}",
            )
        )

    if args.check_invariance:
        alone = engine.generate([requests[-1]])[0]
        same = torch.equal(alone.base_latents, outputs[-1].base_latents)
        diff = (alone.base_latents - outputs[-1].base_latents).abs().max().item()
        header["batch-invariant latents"] = "identical" if same else f"max abs diff {diff:.2e}"
        logger.info(
            "%s image %d alone vs in its batch: %s", elapsed(), len(requests) - 1, header["batch-invariant latents"]
        )

    # (c) the engine with torch.compile.
    if args.compile:
        late = args.compile_deadline is not None and time.perf_counter() - t0 > args.compile_deadline
        if device.type != "cuda":
            logger.warning("engine+compile skipped: torch.compile of the engine is CUDA-only (device %s)", device)
        elif late:
            logger.warning("engine+compile skipped: past the --compile-deadline of %.0f s", args.compile_deadline)
        else:
            import torch._inductor.config as inductor_config

            inductor_config.conv_1x1_as_mm = True
            compiled = SDXLEngine.from_pipelines(
                dataclasses.replace(config, compile=True, compile_mode=args.compile_mode), engine.base, engine.refiner
            )
            _reset_peaks(device)
            t_compile = time.perf_counter()
            r = requests[0]
            compiled.warm_up(r.width, r.height, 2, r.guidance_scale, 0.5)
            _sync(device)
            logger.info("%s compiled and warmed up in %.0f s", elapsed(), time.perf_counter() - t_compile)
            times, _ = run_engine(compiled, requests, device, args.repeats)
            add(
                Row.from_times(
                    "engine+compile",
                    len(requests),
                    times,
                    peak_rss_gib=_peak_rss_gib(),
                    peak_cuda_gib=_peak_cuda_gib(device),
                    note=f"batches of {args.batch}, mode {args.compile_mode or 'default'}",
                )
            )

    block = render(rows, header)
    print(block, flush=True)
    if args.out:
        append_results(Path(args.out), block)
        logger.info("%s appended to %s", elapsed(), args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
