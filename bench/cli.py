"""How long the everyday commands take, wall clock, start-up included (issue 11's "fast commands").

Sets up a data dir with `atelier demo` (tiny models), then times each command in a fresh process
(what a user waits for), N times, and prints the median and the best against its target:

    python bench/cli.py [--repeats 5] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here.parent)]

REPO = _here.parent


def as_user(data: Path, user: str) -> list[str]:
    """`--token-file` of a demo user: its token (from DATA_DIR/demo-tokens.json) in a 0600 file."""
    path = data.parent / f"{user}.token"
    if not path.exists():
        path.write_text(json.loads((data / "demo-tokens.json").read_text())[user] + "\n")
        path.chmod(0o600)
    return ["--token-file", str(path)]


def atelier(*args: str, data: Path, check: bool = True, user: str | None = None) -> subprocess.CompletedProcess[str]:
    who = as_user(data, user) if user else []
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--data-dir", str(data), *who],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if check and done.returncode != 0:
        raise SystemExit(f"atelier {' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    return done


def timed(args: list[str], data: Path, repeats: int, expect: int = 0, user: str = "lee") -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = atelier(*args, data=data, check=False, user=user)
        out.append(time.perf_counter() - t0)
        if done.returncode != expect:
            raise SystemExit(f"atelier {' '.join(args)}: exit {done.returncode}, wanted {expect}: {done.stderr[-300:]}")
    return out


def main() -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-cli-bench-"))
    data = work / "d"
    atelier("demo", data=data)
    batches = json.loads(atelier("batch", "list", "--json", data=data, user="lee").stdout)
    batch_id = batches[0]["batch_id"]
    image = next((data / "store" / "images").glob("*/*.png"))
    rows: list[tuple[str, list[float], float, str]] = []
    rows.append(
        (
            "batch submit (12-row example)",
            timed(
                [
                    "batch",
                    "submit",
                    str(REPO / "examples" / "catalogue.csv"),
                    "--purpose",
                    "catalogue",
                ],
                data,
                a.repeats,
                user="maria",
            ),
            3.0,
            "",
        )
    )
    rows.append(("batch list", timed(["batch", "list"], data, a.repeats), 1.5, ""))
    rows.append(("batch show", timed(["batch", "show", batch_id], data, a.repeats), 1.5, ""))
    rows.append(("trace", timed(["trace", image.parent.name], data, a.repeats), 1.5, ""))
    rows.append(("verify (one file)", timed(["verify", str(image)], data, a.repeats), 2.0, ""))
    # `run` refusing at once: an approved batch, the signer's key gone
    fresh = json.loads(
        atelier(
            "batch",
            "submit",
            str(REPO / "examples" / "catalogue.csv"),
            "--purpose",
            "marketing",
            "--json",
            data=data,
            user="maria",
        ).stdout
    )
    atelier("batch", "approve", fresh["batch_id"], "--content-sha256", fresh["content_sha256"], data=data, user="omar")
    fresh = fresh["batch_id"]
    (data / "keys" / "signer-key.pem").rename(data / "keys" / "signer-key.pem.away")
    rows.append(
        (
            "run, refused (no signer key)",
            timed(["run", "--batch", fresh], data, a.repeats, expect=6, user="ops"),
            3.0,
            "",
        )
    )
    shutil.rmtree(work, ignore_errors=True)

    from datetime import UTC, datetime

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "cpu",
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {cpu}, {os.cpu_count()} cores, load {load}",
        "",
        f"`python bench/cli.py --repeats {a.repeats}`: each command in a fresh process, wall clock, start-up "
        "included, on the demo's data dir (SQLite, local store, tiny models).",
        "",
        "| command | median s | best s | target s | met |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, times, target, _ in rows:
        med = statistics.median(times)
        lines.append(f"| {name} | {med:.2f} | {min(times):.2f} | <= {target:g} | {'yes' if med <= target else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    table = main()
    print(table)
    out = next((Path(sys.argv[i + 1]) for i, v in enumerate(sys.argv[:-1]) if v == "--out"), None)
    if out:
        from bench.harness import record_results

        record_results(out, "cli (issue 11)", "`python bench/cli.py`", table)
