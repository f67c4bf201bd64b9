"""Prompt templates of SPARK Stage I (generator, verifier) and their hashes.

The wording follows the structure of the paper's prompts (SPARK.md §4): the generator numbers its
steps "Step 1, Step 2, ..." and ends with "Answer: ..."; the verifier grades each step in a
``## Step k: <title>`` block that ends with the bold verdict **This step is correct.** or
**This step is incorrect.**, and finishes with "Verification: Is the answer correct (Yes/No)? X".
Templates are plain `str.format` strings; their sha256 goes into every manifest so that a dataset
can be traced to the exact prompt that produced it.
"""

from __future__ import annotations

from spark_hub.io import sha256_text

GENERATOR_TEMPLATE = """\
Solve the following math problem step by step.
Number your steps "Step 1:", "Step 2:", ... and explain the reasoning of each step.
Write every step on its own line. Do not use \\boxed. On the last line write "Answer: " followed by the final answer only.

Problem: {problem}"""

_VERIFIER_INSTRUCTIONS = """\
You are a math teacher grading a student's solution. Check every step of the student's solution
on its own merits: redo its computation and reasoning, and decide whether the step is correct.
There is no partial credit: a step with any error or omission is incorrect, and a step that relies
on an earlier mistake is incorrect too, even if its own arithmetic is right.
For each student step write a block that starts with "## Step k: <short title>", gives your
analysis, and ends with exactly one of the bold verdicts **This step is correct.** or
**This step is incorrect.**
After the last step write the final line:
Verification: Is the answer correct (Yes/No)? X
where X is Yes or No."""

_FEW_SHOT = """\
Example 1

Question: A bakery sells muffins for $3 each and cookies for $2 each. Maya buys 4 muffins and 5 cookies. How much does she spend?

Student Solution:
Step 1: The muffins cost 4 x 3 = 12 dollars.
Step 2: The cookies cost 5 x 2 = 10 dollars.
Step 3: In total she spends 12 + 10 = 22 dollars.
Answer: 22

Teacher Verification:
## Step 1: Cost of the muffins
4 muffins at $3 each cost 4 x 3 = 12 dollars. The computation is right.
**This step is correct.**

## Step 2: Cost of the cookies
5 cookies at $2 each cost 5 x 2 = 10 dollars. The computation is right.
**This step is correct.**

## Step 3: Total
12 + 10 = 22 dollars, which answers the question.
**This step is correct.**

Verification: Is the answer correct (Yes/No)? Yes

Example 2

Question: $1000 is invested at 10% interest compounded yearly. How much is in the account after 3 years?

Student Solution:
Step 1: The amount after n years is 1000 x 1.1^n.
Step 2: After 1 year: 1000 x 1.1 = 1100.
Step 3: After 2 years: 1100 x 1.1 = 1210.
Step 4: After 3 years: 1210 x 1.1 = 1321.
Answer: 1321

Teacher Verification:
## Step 1: Compound interest formula
Yearly compounding at 10% multiplies the balance by 1.1 each year. The formula is right.
**This step is correct.**

## Step 2: First year
1000 x 1.1 = 1100. Right.
**This step is correct.**

## Step 3: Second year
1100 x 1.1 = 1210. Right.
**This step is correct.**

## Step 4: Third year
1210 x 1.1 = 1331, not 1321. The multiplication is wrong.
**This step is incorrect.**

Verification: Is the answer correct (Yes/No)? No"""

VERIFIER_TEMPLATE = (
    _VERIFIER_INSTRUCTIONS
    + "\n\n"
    + _FEW_SHOT
    + """

Now grade the following solution in the same format.

Question: {problem}

Student Solution:
{solution}

Teacher Verification:"""
)

REFERENCE_VERIFIER_TEMPLATE = (
    _VERIFIER_INSTRUCTIONS
    + "\nYou are also given the reference answer. Use it to check the final result, but still judge"
    " every step on its own merits.\n\n"
    + _FEW_SHOT
    + """

Now grade the following solution in the same format.

Question: {problem}

Reference Answer: {reference}

Student Solution:
{solution}

Teacher Verification:"""
)

CRITIQUE_TEMPLATE = """\
You are a math expert reviewing a teacher's step-by-step verification of a student's solution.
Re-derive every step yourself, independently or from a different angle, and check whether the
teacher's verdict for that step is right. Look for four kinds of mistakes in the verification:
1. missed errors: a step marked correct that contains an error;
2. false positives: a correct step marked incorrect;
3. right verdict, wrong reasoning: the verdict is right but the explanation is wrong;
4. an inconsistent final verdict: the final Yes/No contradicts the step verdicts.
Go through the steps in order and, for each one, say whether the teacher's verdict and reasoning
hold. Start your answer with "**Critique of the original verification**".

Question: {problem}

Student Solution:
{solution}

Teacher Verification:
{verification}"""

MERGE_TEMPLATE = """\
Below are a student's solution, a teacher's verification of it, and an expert critique of that
verification. Write ONE improved verification, as if written in a single pass by a careful teacher.
- Where the critique found a mistake, fix the step verdict, the reasoning or the final verdict.
- Where the critique agreed, keep the verdict and make the explanation clearer.
- Never mention an "original verification" or a "critique".
- Keep exactly this format and nothing else: one block per student step that starts with
  "## Step k: <short title>", gives the analysis and ends with **This step is correct.** or
  **This step is incorrect.**; after the last step the line
  Verification: Is the answer correct (Yes/No)? X

Question: {problem}

Student Solution:
{solution}

Teacher Verification:
{verification}

Critique:
{critique}

Improved Teacher Verification:"""

TEMPLATES = {
    "generator": GENERATOR_TEMPLATE,
    "verifier": VERIFIER_TEMPLATE,
    "reference_verifier": REFERENCE_VERIFIER_TEMPLATE,
    "critique": CRITIQUE_TEMPLATE,
    "merge": MERGE_TEMPLATE,
}


def template_hash(name: str) -> str:
    """sha256 of a template's text (recorded in manifests)."""
    return sha256_text(TEMPLATES[name])


def format_solution(steps: list[str], final_answer: str | None) -> str:
    """Render parsed steps as the numbered solution the verifier sees."""
    lines = [f"Step {i}: {step}" for i, step in enumerate(steps, start=1)]
    if final_answer is not None:
        lines.append(f"Answer: {final_answer}")
    return "\n".join(lines)


def generator_messages(problem: str) -> list[dict[str, str]]:
    """Chat messages asking the generator for one step-numbered solution."""
    return [{"role": "user", "content": GENERATOR_TEMPLATE.format(problem=problem)}]


def verifier_messages(
    problem: str, steps: list[str], final_answer: str | None, reference: str | None = None
) -> list[dict[str, str]]:
    """Chat messages asking the verifier to grade each step (reference-free unless given one)."""
    solution = format_solution(steps, final_answer)
    if reference is None:
        text = VERIFIER_TEMPLATE.format(problem=problem, solution=solution)
    else:
        text = REFERENCE_VERIFIER_TEMPLATE.format(
            problem=problem, solution=solution, reference=reference
        )
    return [{"role": "user", "content": text}]


def critique_messages(problem: str, steps: list[str], final_answer: str | None, verification: str) -> list[dict[str, str]]:
    """Meta-critique, call 1: review a verification for the four kinds of mistakes."""
    text = CRITIQUE_TEMPLATE.format(
        problem=problem, solution=format_solution(steps, final_answer), verification=verification
    )
    return [{"role": "user", "content": text}]


def merge_messages(
    problem: str, steps: list[str], final_answer: str | None, verification: str, critique: str
) -> list[dict[str, str]]:
    """Meta-critique, call 2: fold the critique into one verification in the verifier format."""
    text = MERGE_TEMPLATE.format(
        problem=problem, solution=format_solution(steps, final_answer), verification=verification,
        critique=critique,
    )
    return [{"role": "user", "content": text}]
