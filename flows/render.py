"""How the CLI shows the services' typed results on a terminal: tables, key/value blocks, the
progress line and the detail of `verify` and `reproduce`. JSON output is each result's `to_dict()`."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.reproduce import Reproduction
    from flows.runtime import Runtime
    from governance.batches import BatchProgress
    from governance.verify import VerifyResult


def print_json(value: Any) -> None:
    """`value` (a result, a list of results or plain data) as indented JSON on stdout."""
    from governance.results import plain

    print(json.dumps(plain(value), indent=2, sort_keys=True, default=str))


def print_json_line(value: Any) -> None:
    """One JSON object per line (streamed: `verify --json` of a folder)."""
    from governance.results import plain

    print(json.dumps(plain(value), sort_keys=True, default=str), flush=True)


def shown(value: Any, *, one_line: bool = True) -> str:
    """A value as a terminal shows it: control, bidi and zero-width characters escaped, so stored text
    can neither hide, reorder nor erase what is around it (`governance.text`)."""
    from governance.text import escape_unsafe

    return "" if value is None else escape_unsafe(str(value), one_line=one_line)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[shown(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def print_kv(pairs: Mapping[str, Any], indent: str = "") -> None:
    """`key  value` lines, nested mappings indented under their key."""
    width = max((len(k) for k in pairs), default=0)
    for k, v in pairs.items():
        if isinstance(v, Mapping):
            print(f"{indent}{k}:")
            print_kv(v, indent + "  ")
        else:
            print(f"{indent}{k.ljust(width)}  {shown(v)}")


def location(store_url: str | None, key: str | None) -> str:
    """Where an object is: the store's URL and the key, with exactly one `/` between them."""
    if not store_url or not key:
        return key or ""
    return f"{store_url.rstrip('/')}/{key}"


# ---------------------------------------------------------------- progress


def progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def progress_line(p: BatchProgress) -> str:
    """`[####....] 12/200  published 11  quarantined 1  3.2/min  ETA 58 s`."""
    line = f"{progress_bar(p.done, p.planned)}  published {p.published}  quarantined {p.quarantined}"
    if p.images_per_minute:
        line += f"  {p.images_per_minute}/min"
    if p.eta_seconds:
        line += f"  ETA {p.eta_seconds} s"
    return line


class RateWindow:
    """Images per minute over a sliding window of what this process saw (the live progress bar):
    from the first sample on, so the first images of a run give a sane rate, not a burst's."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def per_minute(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return 60 * (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None


class ProgressMonitor:
    """Redraws one batch's progress line on stderr every second while `atelier run` works on it."""

    def __init__(self, rt: Runtime, batch_id: str, interval: float = 1.0):
        self.rt, self.batch_id, self.interval = rt, batch_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._width = 0
        self._rate = RateWindow()

    def _draw(self) -> None:
        from governance.batches import batch_progress

        with self.rt.sessions() as session:
            p = batch_progress(session, self.batch_id)
        self._rate.add(time.monotonic(), p.done)
        per_minute = self._rate.per_minute()
        if per_minute is not None:  # what this run is doing now, over the last minute
            p = p.with_rate(per_minute)
        line = f"batch {self.batch_id[:8]} " + progress_line(p)
        sys.stderr.write("\r" + line.ljust(self._width))
        sys.stderr.flush()
        self._width = len(line)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._draw()
            except Exception:  # noqa: BLE001 - a database hiccup must not disturb the run; retried next second
                pass

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._draw()  # the final state
        except Exception:  # noqa: BLE001
            pass
        sys.stderr.write("\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- verify and reproduce


def _watermark_evidence(result: VerifyResult) -> str:
    assert result.signals is not None and result.signals.watermark is not None
    wm = result.signals.watermark
    if wm.reason:
        return wm.reason
    if wm.decoded is None:
        w, h = wm.size or (0, 0)
        return f"{w}x{h} px; needs 256 a side"
    if not wm.best_match:
        return f"{wm.scheme}: no published image marked this way"
    where = f" (grid offset {wm.offset[0]},{wm.offset[1]} found by search)" if wm.searched and wm.offset else ""
    score = f", score {wm.score} (needs {wm.score_needed})" if wm.score is not None else ""
    return f"{wm.matched_bits}/{wm.total_bits} bits match {wm.best_match}{score}{where}"


def print_verify_detail(result: VerifyResult) -> None:
    """One file's verdict and each signal's evidence."""
    sig = result.signals
    assert sig is not None  # only a checked file has signals; errors are raised, not rendered here
    print(f"{result.file}: {result.verdict.upper()}" + (f" (image {result.image_id})" if result.image_id else ""))
    if result.trace is not None and result.trace.withdrawal:
        w = result.trace.withdrawal
        print(f"WITHDRAWN: image {result.trace.image_id} was withdrawn by {w['by']} at {w['at']}: {shown(w['reason'])}")
    c2pa = sig.c2pa
    c2pa_result = c2pa.state or "no manifest"
    if c2pa.present and c2pa.state == "Valid":
        c2pa_result = "Valid, UNTRUSTED signer"
    rows: list[dict[str, Any]] = [
        {
            "signal": "bytes",
            "result": "match" if sig.bytes.matches_image else "no match",
            "evidence": f"sha256 {sig.bytes.sha256}",
        },
        {
            "signal": "c2pa",
            "result": c2pa_result,
            "evidence": "; ".join(c2pa.failures) or c2pa.error or c2pa.signer.get("issuer", ""),
        },
    ]
    if sig.watermark is not None:
        evidence = _watermark_evidence(result) + (f"; {sig.watermark.note}" if sig.watermark.note else "")
        rows.append({"signal": "watermark", "result": sig.watermark.verdict, "evidence": evidence})
    if sig.fingerprint is not None:
        fp = sig.fingerprint
        rows.append(
            {
                "signal": "fingerprint",
                "result": "match" if fp.match else "no match",
                "evidence": f"distance {fp.distance}/64 to {fp.nearest or '-'}",
            }
        )
    if sig.pixels is not None:
        rows.append({"signal": "pixels", "result": "unreadable", "evidence": sig.pixels.error})
    print_table(rows, ["signal", "result", "evidence"])
    if c2pa.soft_binding_matches_pixels is not None and c2pa.soft_binding:
        blocks = c2pa.soft_binding.get("blocks") or [{}]
        agrees = "matches" if c2pa.soft_binding_matches_pixels else "does NOT match"
        print(
            f"\nthe manifest's soft binding ({c2pa.soft_binding.get('alg')}, payload {blocks[0].get('value')}) "
            f"{agrees} the watermark read from the pixels"
        )
    if result.claim is not None and not result.claim.verified:
        print(f"\nthe manifest claims image {result.claim.image_id}: UNVERIFIED ({result.claim.note})")
    if result.trace is not None:
        t = result.trace
        print(
            f"\nbatch {t.batch.id} ({t.batch.purpose}) requested by {t.batch.requested_by}, "
            f"approved by {t.approval.approved_by}; prompt {shown(t.prompt.row_id)!r}: {shown(t.prompt.text)}"
        )
        print("full record: atelier trace " + t.image_id)


def verify_row(result: VerifyResult) -> dict[str, str]:
    """One line of `verify`'s table for several files."""
    return {
        "file": result.file,
        "verdict": result.verdict,
        "image": result.image_id or "",
        "identified_by": ",".join(result.identified_by) or result.error or "",
    }


def print_reproduction(out: Reproduction) -> None:
    tol = out.tolerance
    if out.verdict == "identical":
        print(f"image {out.image_id}: IDENTICAL pixels (bit-exact) to the published file")
    else:
        summary = "MATCHES within tolerance" if out.matches else "DIFFERENT"
        diff = (
            "sizes differ"
            if out.max_abs_diff is None or out.mean_abs_diff is None
            else f"max abs diff {out.max_abs_diff}, mean abs diff {out.mean_abs_diff:.4f}"
        )
        print(
            f"image {out.image_id}: {summary}: {diff} (tolerance: mean <= {tol.mean_abs_diff}, "
            f"max <= {tol.max_abs_diff})"
        )
    r, e = out.request, out.engine
    print(
        f"regenerated with run {out.run_id}'s settings: configuration {out.pipeline}, sampler {e.scheduler}, "
        f"{e.dtype} on {e.device} (run: {e.recorded_device}), seed {r['seed']}, {r['width']}x{r['height']}, "
        f"{r['steps']} steps, guidance {r['guidance_scale']}, "
        + (f"split {r['refiner_split']}" if r["refiner_split"] is not None else "base alone (no refiner)")
        + "; model hashes equal to the run's"
    )
    for note in out.notes:
        print(f"note: {note}")
