"""Stage I orchestration overhead with the scripted backend (no model cost).

For 1k / 10k / 100k verifications, runs the whole build (cache, parse, aggregate, validate, write
Parquet, card, manifest) in a fresh process and prints verifications/s and peak RSS; then re-runs
the finished build and prints its cost as a ratio of the first run.
Targets: >= 20,000 verifications/s, flat memory, re-run < 2% of the first run.

    python bench/stage1_overhead.py [--sizes 1000 10000 100000] [--n 8] [--m 4]

``--realistic`` (issue 8 §7): texts the size the paper's verifier writes (12-step solutions, ~2 KB
verifications, N=16; default sizes 16k and 80k), built through the real CLI (``python -m
spark_hub.cli build-dataset`` in a fresh process). Prints in one run: end-to-end CLI verifications/s,
the bare `parse_verification` rate on the same texts, their ratio (target >= 0.5), peak RSS of the
CLI process, and re-run/first (target < 2%) by wall clock and by CPU time.

    python bench/stage1_overhead.py --realistic [--sizes 16000 80000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


# ----------------------------------------------------------------------------- realistic texts

TITLES = ["Setting up the equation", "Computing the total cost", "Simplifying the expression", "Checking the units",
          "Substituting the values", "Dividing by the number of groups", "Finding the remainder", "Adding the parts",
          "Multiplying the rate by time", "Comparing the two quantities", "Solving for x", "Stating the final answer"]
ANALYSIS = [
    "The student multiplies {a} by {b} and writes {c}. Recomputing: {a} \\times {b} = {c}, which matches.",
    "In this step the student uses the result of the previous step, {a}, and adds {b} to get {c}. This is "
    "consistent with the problem statement.",
    "We need to check whether the quantity of {a} items at ${b} each is handled correctly: $ {a} \\cdot {b} = {c} $. "
    "The arithmetic is right and the reasoning follows.",
    "The student claims that {c} / {b} = {a}. Verifying, {b} \\times {a} = {c}, so the division is correct; nothing "
    "is missing from this step.",
    "Here the step restates the given information ({a} hours at {b} miles per hour) and derives a distance of {c} "
    "miles, which is what the formula d = rt gives.",
]


def realistic_solution(rng: random.Random, n_steps: int = 12) -> str:
    lines = []
    for k in range(1, n_steps + 1):
        a, b = rng.randint(2, 90), rng.randint(2, 40)
        lines.append(f"Step {k}: {rng.choice(TITLES)}: we have {a} and {b}, so {a} * {b} = {a * b}.")
    return "\n".join(lines) + f"\nAnswer: {rng.randint(10, 999)}"


def realistic_verification(rng: random.Random, n_steps: int, wrong=(), final: bool | None = True,
                           think: bool = False, target_chars: int = 2048) -> str:
    """``## Step k`` blocks of analysis and a bold verdict, then the final line (~``target_chars``)."""
    per_block = target_chars // n_steps
    blocks = []
    for k in range(1, n_steps + 1):
        a, b = rng.randint(2, 90), rng.randint(2, 40)
        body = ""
        while len(body) < per_block:
            body += rng.choice(ANALYSIS).format(a=a, b=b, c=a * b) + " "
        body = body[: body.rfind(" ", 0, per_block - 65)]  # header and verdict lines take the rest
        verdict = "incorrect" if k in wrong else "correct"
        blocks.append(f"## Step {k}: {rng.choice(TITLES)}\n{body.strip()}\n**This step is {verdict}.**")
    text = "\n\n".join(blocks)
    if final is not None:
        text += f"\n\nVerification: Is the answer correct (Yes/No)? {'Yes' if final else 'No'}"
    if think:
        text = "<think>\nLet me check each step carefully before writing the verification.\n</think>\n\n" + text
    return text


def realistic_verifications(n: int = 16, n_steps: int = 12, seed: int = 0) -> list[str]:
    """N verifier outputs: mostly complete, some with a wrong step, a few malformed (as models write)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 8
        if kind == 5:  # one block short: step_count_mismatch
            out.append(realistic_verification(rng, n_steps - 1))
        elif kind == 6:  # truncated: no final verdict
            out.append(realistic_verification(rng, n_steps, final=None))
        elif kind == 7 and i >= 8:  # unparsable
            out.append("I am not sure about this solution. " * 40)
        else:
            wrong = {rng.randint(1, n_steps)} if kind in (1, 3) else ()
            out.append(realistic_verification(rng, n_steps, wrong=wrong, final=not wrong, think=kind == 2))
    return out


def write_realistic_inputs(folder: Path, problems: int, m: int, n: int) -> Path:
    rng = random.Random(1)
    rows = [json.loads(line) for line in open(SHARED)] if SHARED.exists() else []
    with open(folder / "problems.jsonl", "w") as f:
        for i in range(problems):
            text = rows[i % len(rows)]["problem"] if rows else f"What is {i} + {i}?"
            f.write(json.dumps({"id": f"p{i}", "problem": f"{text} (variant {i})", "answer": "1"}) + "\n")
    (folder / "gen.jsonl").write_text(json.dumps({"completions": [realistic_solution(rng) for _ in range(m)]}) + "\n")
    (folder / "ver.jsonl").write_text(json.dumps({"completions": realistic_verifications(n)}) + "\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"problems: problems.jsonl\n"
        f"generator: {{backend: scripted, model: gen.jsonl, n: {m}, batch_size: 256}}\n"
        f"verifier: {{backend: scripted, model: ver.jsonl, n: {n}, batch_size: 256}}\n"
        f"chunk_size: 256\n")
    return recipe


def bare_parse_rate(texts: list[str], n_steps: int = 12, parses: int = 32000) -> tuple[float, float]:
    """`parse_verification` calls per second on ``texts``, by wall clock and by CPU time (best of 3)."""
    from spark_hub.parsing import parse_verification

    work = (texts * (parses // len(texts) + 1))[:parses]
    wall = cpu = float("inf")
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for text in work:
            parse_verification(text, n_steps)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return len(work) / wall, len(work) / cpu


def row_costs(texts: list[str], m: int, n: int) -> dict[str, float]:
    """CPU microseconds per verification of the per-row parts, on the same texts (best of 3):
    parse, record -> row (to_dict), schema validation (the verification row plus 1/N of its
    solution's step-record row), Arrow table + Parquet (zstd) write of the verification rows."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_hub.parsing import parse_solution, parse_verification
    from spark_hub.records import StepRecord, Verification, arrow_schema
    from spark_hub.schema import fast_check

    rng = random.Random(2)
    solution = realistic_solution(rng)
    parsed = parse_solution(solution)
    records = []
    for i, text in enumerate(texts * max(1, 4096 // len(texts))):
        p = parse_verification(text, 12)
        records.append(Verification(problem_id=f"p{i // (m * n)}", solution_index=(i // n) % m, index=i % n,
                                    verifier="bench", raw_text=text, text=p.text, step_verdicts=p.step_verdicts,
                                    final_verdict=p.final_verdict, parse_status=p.status, expected_steps=12,
                                    finish_reason="stop", completion_tokens=len(text) // 4))
    step = StepRecord(problem_id="p0", problem="A bench problem " * 8, reference="1", solution_index=0,
                      solution=solution, steps=parsed.steps, step_spans=parsed.spans, final_answer=parsed.final_answer,
                      solution_status=parsed.status, generator="bench", verifier="bench", method="step_consistency",
                      n_verifications=n, cot_target=texts[0], cot_verification_index=0, cot_verification_id="p0/s0/s0",
                      cot_exact_match=True, status="ok", labels=[True] * 12, final_label=True, votes_correct=[n - 1] * 12,
                      votes_incorrect=[1] * 12, agreement=[(n - 1) / n] * 12, step_probs=[0.9] * 12,
                      final_votes_yes=n - 1, final_votes_no=1, final_prob=0.9, n_parsed=n - 2)
    rows = [r.to_dict() for r in records]
    step_rows = [step.to_dict()] * (len(rows) // n)
    check_v, check_s = fast_check("verification"), fast_check("step_record")
    schema = arrow_schema(Verification)

    def write():
        buffer = io.BytesIO()
        with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))

    parts = {
        "parse": lambda: [parse_verification(r.raw_text, 12) for r in records],
        "to_dict": lambda: [r.to_dict() for r in records],
        "validate": lambda: ([check_v(r) for r in rows], [check_s(r) for r in step_rows]),
        "arrow+parquet": write,
    }
    costs = {}
    for name, fn in parts.items():
        best = float("inf")
        for _ in range(3):
            c0 = time.process_time()
            fn()
            best = min(best, time.process_time() - c0)
        costs[name] = best / len(records) * 1e6
    return costs


def run_cli(recipe: Path, out: Path) -> tuple[float, float, float]:
    """Run ``spark-hub build-dataset`` in a fresh process: ``(wall s, CPU s, peak RSS MiB)``.

    CPU seconds (user + system of the process) make rates comparable on a busy shared machine,
    where wall time mostly measures the other processes."""
    cmd = [sys.executable, "-m", "spark_hub.cli", "build-dataset", "--config", str(recipe),
           "--output-dir", str(out), "--no-progress", "--quiet"]
    env = {**os.environ, "SPARK_HUB_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=recipe.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build-dataset failed ({proc.returncode}):\n{output.decode(errors='replace')[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def realistic(sizes: list[int], m: int, n: int) -> None:
    texts = realistic_verifications(n)
    mean_kb = sum(len(t) for t in texts) / len(texts) / 1024
    parse_wall, parse_cpu = bare_parse_rate(texts)
    load = os.getloadavg()[0]
    print(f"Stage I through the CLI on realistic texts: 12-step solutions, verifications ~{mean_kb:.1f} KB, "
          f"M={m}, N={n}, scripted backend; {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"bare parse rate (parse_verification, same texts, one process): {parse_wall:,.0f}/s wall, "
          f"{parse_cpu:,.0f}/s per CPU second")
    costs = row_costs(texts, m, n)
    print("per-row parts, CPU us per verification: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items())
          + f"; validation / parse = {costs['validate'] / costs['parse']:.2f} (target < 1)")
    print(f"{'verifications':>14} {'CLI s':>7} {'CLI verif/s':>12} {'ratio':>6} {'CPU s':>7} {'verif/CPU s':>12} "
          f"{'ratio':>6} {'peak RSS MiB':>13} {'re-run s':>9} {'re-run/first':>13} {'re-run CPU s':>13} {'CPU re-run/first':>17}")
    for size in sizes:
        problems = max(1, round(size / (m * n)))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            recipe = write_realistic_inputs(folder, problems, m, n)
            first, cpu, rss = run_cli(recipe, folder / "out")
            again, again_cpu, _ = run_cli(recipe, folder / "out")
            verifications = json.loads((folder / "out" / "manifest.json").read_text())["statistics"]["verifications"]
            rate, cpu_rate = verifications / first, verifications / cpu
            print(f"{verifications:>14,} {first:>7.1f} {rate:>12,.0f} {rate / parse_wall:>6.2f} {cpu:>7.1f} "
                  f"{cpu_rate:>12,.0f} {cpu_rate / parse_cpu:>6.2f} {rss:>13.0f} {again:>9.2f} {again / first:>12.2%} "
                  f"{again_cpu:>13.2f} {again_cpu / cpu:>16.2%}", flush=True)
    print("ratio: CLI rate / bare parse rate (wall, then CPU time); targets: >= 0.5, re-run < 2% of the first run "
          "(wall, then CPU time: the CPU figure is the one to trust on a loaded machine), flat peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="verifications per build "
                        "(default 1000 10000 100000; with --realistic 16000 80000)")
    parser.add_argument("--m", type=int, default=4, help="solutions per problem")
    parser.add_argument("--n", type=int, help="verifications per solution (default 8; with --realistic 16)")
    parser.add_argument("--realistic", action="store_true", help="paper-sized texts through the CLI (see above)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, out, m, n = args.child
        child(folder, out, int(m), int(n))
        return
    if args.realistic:
        realistic(args.sizes or [16000, 80000], args.m, args.n or 16)
        return
    args.sizes = args.sizes or [1000, 10000, 100000]
    args.n = args.n or 8

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
