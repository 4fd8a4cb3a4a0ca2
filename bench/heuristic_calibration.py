"""Measure the offline model's accuracy and confidence calibration on samples/.

Run from the repository root:

    .venv/bin/python bench/heuristic_calibration.py [--verbose] [--bins 10]

For every sample in samples/truth.json, read the text the way the product does (extraction.documents),
run heuristic.extract with the sample type's schema, and compare each field to the truth with
normalize.values_equal. Print accuracy per field, overall accuracy, a reliability table (confidence bins:
count, mean confidence, accuracy), the expected calibration error (ECE) and timing.

The samples were written alongside the extractor, so they flatter it. ``--perturb N`` adds N seeded,
degraded copies of every sample (OCR digit/letter confusions, a lost line, upper-casing, lost colons,
collapsed column spacing) scored against the same truth: a stress test where confidence has to drop
with the evidence. Its table is printed separately.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extraction import heuristic  # noqa: E402
from extraction.demo_types import SCHEMAS  # noqa: E402
from extraction.normalize import display, values_equal  # noqa: E402


def load_text(path: Path) -> str:
    """Return the document text as the product sees it (HTML and e-mail converted by extraction.documents)."""
    from extraction.documents import extract_text

    return extract_text(path.read_bytes(), path.name).text


_OCR = {"O": "0", "o": "0", "l": "1", "I": "1", "S": "5", "B": "8"}


def perturb(text: str, rng: random.Random) -> str:
    """Return a degraded copy of a document, as a poor scan or OCR pass would produce it."""
    lines = text.split("\n")
    content = [i for i, line in enumerate(lines) if line.strip()]
    if len(content) > 5:
        del lines[rng.choice(content)]  # a torn or unreadable line
    text = "\n".join(lines)
    text = "".join(_OCR[ch] if ch in _OCR and rng.random() < 0.04 else ch for ch in text)
    if rng.random() < 0.3:
        text = text.upper()
    if rng.random() < 0.3:
        text = text.replace(":", "")
    if rng.random() < 0.3:
        text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return text


def reliability(
    rows: list[tuple[float, bool]], bins: int
) -> tuple[list[tuple[str, int, float, float]], float]:
    """Return the reliability table [(bin, count, mean confidence, accuracy)] and the ECE."""
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(c, ok) for c, ok in rows if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if not members:
            continue
        conf = sum(c for c, _ in members) / len(members)
        acc = sum(ok for _, ok in members) / len(members)
        ece += len(members) / len(rows) * abs(acc - conf)
        table.append((f"{lo:.1f}-{hi:.1f}", len(members), conf, acc))
    return table, ece


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=ROOT / "samples")
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--verbose", "-v", action="store_true", help="print every field")
    parser.add_argument("--perturb", type=int, default=0, metavar="N", help="also score N degraded copies")
    args = parser.parse_args(argv)

    truth: dict[str, Any] = json.loads((args.samples / "truth.json").read_text(encoding="utf-8"))
    texts = {filename: load_text(args.samples / filename) for filename in truth}
    print("== samples as written")
    score(truth, texts, args.bins, args.verbose)
    if args.perturb:
        rng = random.Random(20240312)
        degraded: dict[str, Any] = {}
        degraded_texts: dict[str, str] = {}
        for filename, expected in truth.items():
            for n in range(args.perturb):
                key = f"{filename}#{n}"
                degraded[key] = expected
                degraded_texts[key] = perturb(texts[filename], rng)
        print(f"\n== {len(degraded)} degraded copies ({args.perturb} per sample)")
        score(degraded, degraded_texts, args.bins, args.verbose)
    return 0


def score(truth: dict[str, Any], texts: dict[str, str], bins: int, verbose: bool) -> None:
    """Run the extractor over `texts` and print accuracy, the reliability table and timing."""
    rows: list[tuple[float, bool]] = []
    above: list[bool] = []  # fields whose confidence reaches their review threshold
    per_field: dict[str, list[bool]] = {}
    classified = 0
    timings: list[float] = []
    for filename, expected in truth.items():
        schema = SCHEMAS[expected["type"]]
        text = texts[filename]
        started = time.perf_counter()
        result = heuristic.extract(text, schema.fields)
        timings.append(time.perf_counter() - started)
        cls = heuristic.classify(text, list(SCHEMAS.values()), expected["type"])
        classified += cls["document_type"] == expected["type"]
        if verbose:
            print(
                f"\n== {filename} (classified {cls['document_type']}, {cls['language']}, {cls['confidence']})"
            )
        for spec in schema.fields:
            got = result[spec.name]
            want = expected["fields"].get(spec.name)
            ok = values_equal(spec, got["value"], want)
            rows.append((got["confidence"], ok))
            if got["confidence"] >= spec.threshold:
                above.append(ok)
            per_field.setdefault(f"{schema.slug}.{spec.name}", []).append(ok)
            if verbose:
                mark = "ok " if ok else "BAD"
                print(
                    f"  {mark} {spec.name:15} {display(spec, got['value'])!r:45} conf={got['confidence']:.3f}"
                    + ("" if ok else f"  want {display(spec, want)!r}")
                    + f"\n      {got['reasoning']}"
                )

    print(f"{'field':28} {'n':>3} {'accuracy':>9}")
    for name, oks in per_field.items():
        print(f"{name:28} {len(oks):3d} {sum(oks) / len(oks):9.2f}")
    total_ok = sum(ok for _, ok in rows)
    print(f"\noverall accuracy: {total_ok}/{len(rows)} = {total_ok / len(rows):.3f}")
    print(f"classification: {classified}/{len(truth)} correct")
    if above:
        print(
            f"at or above the field's threshold: {len(above)}/{len(rows)} fields, "
            f"of which {sum(above)} correct ({sum(above) / len(above):.3f})"
        )

    table, ece = reliability(rows, bins)
    print(f"\n{'confidence':>10} {'count':>6} {'mean conf':>10} {'accuracy':>9}")
    for label, count, conf, acc in table:
        print(f"{label:>10} {count:6d} {conf:10.3f} {acc:9.3f}")
    mean_conf = sum(c for c, _ in rows) / len(rows)
    print(f"\nmean confidence {mean_conf:.3f}, expected calibration error (ECE) {ece:.3f}")
    print(
        f"extract time per document: mean {1000 * sum(timings) / len(timings):.1f} ms, max {1000 * max(timings):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
