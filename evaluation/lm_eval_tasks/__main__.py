"""``python -m evaluation.lm_eval_tasks --path``: print the directory for ``lm_eval --include_path``."""

from __future__ import annotations

import argparse

from evaluation.lm_eval_tasks import GROUP_NAMES, TASK_NAMES, task_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.lm_eval_tasks",
        description="The GLM harness's lm-eval task configs for local data.",
        epilog='example: lm_eval --model glm-onnx --model_args pretrained=out/onnx --include_path "$(python -m '
        'evaluation.lm_eval_tasks --path)" --tasks glm_demo --limit 20',
    )
    parser.add_argument("--path", action="store_true", help="print the task directory (for --include_path) and exit")
    args = parser.parse_args(argv)
    if args.path:
        print(task_dir())
        return 0
    print(f"task directory: {task_dir()}")
    print(f"tasks: {', '.join(TASK_NAMES)}")
    print(f"groups: {', '.join(GROUP_NAMES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
