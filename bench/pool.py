"""Throughput with several workers (issue 6): end-to-end images/s and orchestration overhead per image.

Each configuration: a fresh PostgreSQL database, one approved batch shared by N `atelier run`
worker processes (fresh processes, started together) reporting to one real Prefect server on
PostgreSQL; images go to a local store folder.

- `tiny`: the real tiny SDXL-architecture models on the CPU, N = 1 and 2.
- `simulated GPU`: generation replaced by a stage of fixed duration per image (--gpu-seconds,
  default 1.1 s: SDXL base+refiner at 1024x1024 on one H200 took 1.25 s/image compiled and 1.69
  s/image eager, bench/RESULTS.md), which sleeps, so it uses no CPU, like a GPU; the pixels are
  seeded smooth noise. Everything after it is real: safety model, watermark, C2PA signing, hashes,
  upload, records, audit, Prefect task runs. N = 1, 2, 4: how close N workers come to N x one.

From each worker's run summary: generate_s (engine), safety_s (safety model), after_decode_wait_s
(blocked on the after-decode pool), publish_s (upload + record), claim_s (claim/complete chunks),
idle_s (waiting at the batch's end for chunks leased to another worker), wall_s (the whole loop,
after models are loaded). Orchestration overhead per image = (wall - generate - safety -
after-decode wait - idle) / images: publishing, claiming and Prefect's task runs. The target is at
most 10% of the engine's own time per image.
End-to-end images/s = images / the longest worker's wall_s (workers start together; model loading
is excluded, as a pool's workers keep models loaded).

    .venv/bin/python bench/pool.py [--images 32] [--sim-images 64] [--gpu-seconds 1.1] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here.parent)]


def simulate_gpu(seconds_per_image: float) -> None:
    """Swap the engine's generate for a sleep of fixed duration per image (this process only)."""
    import numpy as np
    import torch

    from sdxl_core.engine import GeneratedImage, SDXLEngine

    def generate(self, requests):  # type: ignore[no-untyped-def]
        out = []
        for r in requests:
            time.sleep(seconds_per_image)
            rng = np.random.default_rng(r.seed)
            coarse = rng.integers(0, 256, (r.height // 16, r.width // 16, 3), dtype=np.uint8)
            pixels = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)  # smooth, photo-sized PNGs
            out.append(GeneratedImage(r, np.ascontiguousarray(pixels), torch.zeros(1)))
        return out

    SDXLEngine.generate = generate  # type: ignore[method-assign]


def measure(
    label: str,
    workers: int,
    images: int,
    size: int,
    steps: int,
    gpu_seconds: float,
    models: tuple[Path, Path],
    prefect_url: str,
) -> dict:
    from bench.harness import approved_batch

    with approved_batch(images, size, steps, models, prefix="atelier_pool") as batch:
        env = {**os.environ, "PREFECT_API_URL": prefect_url, "ATELIER_CHUNK_SIZE": "4"}
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(gpu_seconds),
            "--",
            "run",
            "--batch",
            batch.batch_id,
            "--json",
            *batch.flags,
        ]
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(workers)
        ]
        summaries = []
        for p in procs:
            out, _ = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise SystemExit(f"{label}: a worker failed ({p.returncode}): {out[-2000:]}")
            summaries.append(json.loads(out)[0])
    done = sum(s["published"] + s["quarantined"] for s in summaries)
    assert done == images, (done, images)
    total = {
        k: sum(s[k] for s in summaries)
        for k in ("generate_s", "safety_s", "after_decode_wait_s", "publish_s", "claim_s", "idle_s", "wall_s")
    }
    wall = max(s["wall_s"] for s in summaries)
    engine = total["generate_s"] / images
    overhead = (
        total["wall_s"] - total["generate_s"] - total["safety_s"] - total["after_decode_wait_s"] - total["idle_s"]
    ) / images
    return {
        "mode": label,
        "workers": workers,
        "images": images,
        "seconds": round(wall, 1),
        "images_per_s": round(images / wall, 3),
        "engine_s_per_image": round(engine, 3),
        "safety_s_per_image": round(total["safety_s"] / images, 3),
        "after_decode_wait_s_per_image": round(total["after_decode_wait_s"] / images, 3),
        "publish_s_per_image": round(total["publish_s"] / images, 3),
        "claim_s_per_image": round(total["claim_s"] / images, 3),
        "idle_s_per_image": round(total["idle_s"] / images, 3),
        "overhead_s_per_image": round(overhead, 3),
        "overhead_pct_of_engine": round(100 * overhead / engine, 1),
    }


def run(args: argparse.Namespace) -> str:
    from bench.harness import prefect_server, results_table
    from sdxl_core.tiny import ensure_tiny_models

    models = ensure_tiny_models(Path(".atelier/test-cache/models"))
    rows: list[dict] = []
    with prefect_server() as api:
        for n in args.tiny_workers:
            rows.append(measure("tiny (CPU)", n, args.images, 256, 2, 0.0, models, api))
            print(rows[-1], flush=True)
        for n in args.sim_workers:
            rows.append(
                measure(
                    f"simulated GPU {args.gpu_seconds} s/image",
                    n,
                    args.sim_images,
                    args.sim_size,
                    2,
                    args.gpu_seconds,
                    models,
                    api,
                )
            )
            print(rows[-1], flush=True)
    for r in rows:
        one = next(x for x in rows if x["mode"] == r["mode"] and x["workers"] == 1)
        r["vs_N_x_one"] = f"{r['images_per_s'] / (r['workers'] * one['images_per_s']):.0%}"
    return results_table(
        f"no GPU; tiny batches of {args.images} images (256x256, 2 steps), simulated-GPU batches of "
        f"{args.sim_images} images ({args.sim_size}x{args.sim_size})",
        rows,
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":  # a worker process: `atelier run`, maybe simulated
        seconds, argv = float(sys.argv[2]), sys.argv[4:]
        if seconds > 0:
            simulate_gpu(seconds)
        from flows.cli import main as atelier

        sys.exit(atelier(argv))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="images per tiny batch")
    p.add_argument("--tiny-workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--sim-images", type=int, default=64, help="images per simulated-GPU batch")
    p.add_argument("--sim-size", type=int, default=1024)
    p.add_argument("--sim-workers", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--gpu-seconds", type=float, default=1.1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    table = run(a)
    print(table)
    if a.out:
        from bench.harness import record_results

        intro = " ".join(__doc__.split("\n\n")[1].split())
        record_results(a.out, "pool (issue 6)", f"`python bench/pool.py`: {intro}", table)


if __name__ == "__main__":
    main()
