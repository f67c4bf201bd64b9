"""Stage I orchestration overhead with the scripted backend (no model cost).

For 1k / 10k / 100k verifications, runs the whole build (cache, parse, aggregate, validate, write
Parquet, card, manifest) in a fresh process and prints verifications/s and peak RSS; then re-runs
the finished build and prints its cost as a ratio of the first run.
Targets: >= 20,000 verifications/s, flat memory, re-run < 2% of the first run.

    python bench/stage1_overhead.py [--sizes 1000 10000 100000] [--n 8] [--m 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

SOLUTIONS = [
    "Step 1: Read the problem carefully and list the quantities.\nStep 2: Multiply 12 by 3 to get 36.\n"
    "Step 3: Add 4 to get 40.\nAnswer: 40",
    "Step 1: Start with 15 items.\nStep 2: Remove 5, leaving 10.\nStep 3: Double it to 20.\nStep 4: Add 2.\nAnswer: 22",
    "Step 1: The rate is 6 per hour.\nStep 2: Over 5 hours that is 30.\nAnswer: 30",
    "Step 1: Half of 50 is 25.\nStep 2: 25 + 10 = 35.\nStep 3: 35 - 5 = 30.\nAnswer: 30",
]


def verification(n_steps: int, wrong: set[int], final: bool | None, think: bool = False) -> str:
    blocks = []
    for k in range(1, n_steps + 1):
        verdict = "incorrect" if k in wrong else "correct"
        blocks.append(f"## Step {k}: Check step {k}\nRecomputing the arithmetic of this step gives the same value "
                      f"as the student wrote, and the reasoning follows from the previous step.\n"
                      f"**This step is {verdict}.**")
    text = "\n\n".join(blocks)
    if final is not None:
        text += f"\n\nVerification: Is the answer correct (Yes/No)? {'Yes' if final else 'No'}"
    return ("<think>Checking carefully before answering.</think>\n" if think else "") + text


VERIFICATIONS = [
    verification(3, set(), True, think=True), verification(3, {2, 3}, False), verification(3, set(), True),
    verification(4, {4}, False), verification(2, set(), True), verification(3, {3}, False),
    verification(3, set(), None), "I am not sure about this solution.",
]


def write_inputs(folder: Path, problems: int) -> Path:
    rows = [json.loads(line) for line in open(SHARED)] if SHARED.exists() else []
    path = folder / "problems.jsonl"
    with open(path, "w") as f:
        for i in range(problems):
            text = rows[i % len(rows)]["problem"] if rows else f"What is {i} + {i}?"
            f.write(json.dumps({"id": f"p{i}", "problem": f"{text} (variant {i})", "answer": "1"}) + "\n")
    (folder / "gen.jsonl").write_text(json.dumps({"completions": SOLUTIONS}) + "\n")
    (folder / "ver.jsonl").write_text(json.dumps({"completions": VERIFICATIONS}) + "\n")
    return path


def child(folder: str, out: str, m: int, n: int) -> None:
    """Run one build in this process and print JSON timings (called in a subprocess)."""
    os.environ["SPARK_HUB_NO_PROGRESS"] = "1"
    from spark_hub.config import load_build_config
    from spark_hub.stages import build

    folder_path = Path(folder)
    overrides = [
        "generator.backend=scripted", f"generator.model={folder_path / 'gen.jsonl'}", f"generator.n={m}",
        "verifier.backend=scripted", f"verifier.model={folder_path / 'ver.jsonl'}", f"verifier.n={n}",
        "generator.batch_size=256", "verifier.batch_size=256", "chunk_size=256",
    ]
    config = load_build_config(None, overrides, problems=str(folder_path / "problems.jsonl"), output_dir=out)
    t0 = time.perf_counter()
    result = build.main(config, progress=False)
    seconds = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "loop_seconds": result.loop_seconds,
                      "verifications": result.statistics.get("verifications"),
                      "reused": result.reused, "rss_mib": rss_mib}))


def run_child(folder: Path, out: Path, m: int, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), str(out), str(m), str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--m", type=int, default=4, help="solutions per problem")
    parser.add_argument("--n", type=int, default=8, help="verifications per solution")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, out, m, n = args.child
        child(folder, out, int(m), int(n))
        return

    print(f"Stage I overhead, scripted backend, M={args.m}, N={args.n}")
    print("verif/s: whole build (inputs, cache, parse, aggregate, validate, Parquet, card, plot, manifest);")
    print("stream verif/s: the per-chunk loop only (what grows with the data; the rest is a fixed cost)")
    print(f"{'verifications':>14} {'seconds':>9} {'verif/s':>10} {'stream verif/s':>15} {'peak RSS MiB':>13} "
          f"{'re-run s':>9} {'re-run/first':>13}")
    for size in args.sizes:
        problems = max(1, round(size / (args.m * args.n)))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_inputs(folder, problems)
            first = run_child(folder, folder / "out", args.m, args.n)
            again = run_child(folder, folder / "out", args.m, args.n)
            assert again["reused"], "the re-run should find the finished build"
            rate = first["verifications"] / first["seconds"]
            stream = first["verifications"] / first["loop_seconds"]
            print(f"{first['verifications']:>14,} {first['seconds']:>9.2f} {rate:>10,.0f} {stream:>15,.0f} {first['rss_mib']:>13.0f} "
                  f"{again['seconds']:>9.3f} {again['seconds'] / first['seconds']:>12.2%}")
    print("targets: >= 20,000 verifications/s, flat peak RSS, re-run < 2% of the first run")


if __name__ == "__main__":
    main()
