"""Does the report's speed measurement hold up? Real models, quiet and under a deliberate load.

For each load level (number of extra processes spinning on the CPU while timing), in one process:
- teacher and student timed interleaved, as ``report`` does;
- each model timed alone with the same protocol (``time_forward``): the figures a standalone measurement gives;
- the teacher timed against itself: the ratio must come out near 1.

    python eval/speed_check.py --teacher runs/demo/teacher --student runs/demo/student/stage2-prediction \
        --dataset ../shared/data/sst2/validation.jsonl --load 0 2 4 --output runs/speed_check.json
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_distill.evaluation.classification import load_classifier  # noqa: E402
from llm_distill.evaluation.common import load_table  # noqa: E402
from llm_distill.evaluation.latency import TimingTarget, text_batcher, time_forward, time_models  # noqa: E402


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def measure(teacher, student, t_make, s_make, n: int, repeats: int) -> dict:
    kw = {"batch_size": 8, "repeats": repeats, "max_repeats": 2 * repeats}
    both = time_models(
        [TimingTarget("teacher", teacher, t_make, n), TimingTarget("student", student, s_make, n)], **kw
    )
    self_ = time_models([TimingTarget("a", teacher, t_make, n), TimingTarget("b", teacher, t_make, n)], **kw)
    alone = {"teacher": time_forward(teacher, t_make, n, **kw), "student": time_forward(student, s_make, n, **kw)}
    m = both["models"]
    return {
        "interleaved_ms": {k: m[k]["latency_ms_per_example"] for k in m},
        "interleaved_typical_ms": {k: m[k]["latency_typical_ms"] for k in m},
        "standalone_ms": {k: v["latency_ms_per_example"] for k, v in alone.items()},
        "speedup_interleaved": both["ratios"]["student"]["speedup"],
        "speedup_interleaved_ci": both["ratios"]["student"]["speedup_ci"],
        "speedup_standalone": alone["teacher"]["latency_ms_per_example"] / alone["student"]["latency_ms_per_example"],
        "throughput_ratio_interleaved": both["ratios"]["student"]["throughput_ratio"],
        "throughput_ratio_standalone": alone["student"]["throughput_examples_per_s"]
        / alone["teacher"]["throughput_examples_per_s"],
        "self_speedup": self_["ratios"]["b"]["speedup"],
        "self_speedup_ci": self_["ratios"]["b"]["speedup_ci"],
        "self_throughput_ratio": self_["ratios"]["b"]["throughput_ratio"],
        "cpu_share": both["timing"]["cpu_share"],
        "load_after": both["timing"]["load_after"],
        "rounds": both["timing"]["rounds"],
        "warnings": both["warnings"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--load", type=int, nargs="+", default=[0, 2], help="extra spinning processes per level")
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    texts = load_table(a.dataset).select(range(a.examples))[a.text_column]
    teacher, t_tok = load_classifier(a.teacher, "cpu")
    student, s_tok = load_classifier(a.student, "cpu")
    t_make, s_make = (text_batcher(tok, texts, teacher.device, 128) for tok in (t_tok, s_tok))
    results = []
    for load in a.load:
        stop_at = time.time() + 3600
        burners = [multiprocessing.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(load)]
        for b in burners:
            b.start()
        try:
            row = {
                "extra_spinning_processes": load,
                **measure(teacher, student, t_make, s_make, a.examples, a.repeats),
            }
        finally:
            for b in burners:
                b.terminate()
                b.join()
        results.append(row)
        i, s = row["interleaved_ms"], row["standalone_ms"]
        print(
            f"load +{load}: teacher {i['teacher']:.2f} ms (alone {s['teacher']:.2f}), student {i['student']:.2f} ms "
            f"(alone {s['student']:.2f}); speed-up {row['speedup_interleaved']:.3f} {row['speedup_interleaved_ci']} "
            f"(alone {row['speedup_standalone']:.3f}); throughput x{row['throughput_ratio_interleaved']:.3f} "
            f"(alone {row['throughput_ratio_standalone']:.3f}); teacher vs itself {row['self_speedup']:.3f} "
            f"{row['self_speedup_ci']}, throughput {row['self_throughput_ratio']:.3f}; median run "
            f"{row['interleaved_typical_ms']['teacher']:.2f} ms; CPU share {row['cpu_share']:.0%}, load "
            f"{row['load_after']:.1f}",
            flush=True,
        )
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
