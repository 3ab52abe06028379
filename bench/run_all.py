"""Run every benchmark and write bench/RESULTS.md (``make bench``)."""

from __future__ import annotations

import datetime
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_dicom  # noqa: E402  (after the path insert)
import bench_generate  # noqa: E402
import bench_llava_step  # noqa: E402
import bench_llm  # noqa: E402
import bench_lora  # noqa: E402
import bench_lora_module  # noqa: E402
import bench_meteor  # noqa: E402
import bench_metrics  # noqa: E402
import bench_trainer  # noqa: E402
import bench_vision  # noqa: E402
import bench_volume  # noqa: E402

BENCHES = [
    ("metrics", bench_metrics.run),
    ("meteor", bench_meteor.run),
    ("llm", bench_llm.run),
    ("generate", bench_generate.run),
    ("lora", bench_lora.run),
    ("lora_module", bench_lora_module.run),
    ("vision", bench_vision.run),
    ("clip", bench_vision.run_clip),
    ("llava_step", bench_llava_step.run),
    ("volume", bench_volume.run),
    ("trainer", bench_trainer.run),
    ("volume_dataloader", bench_volume.run_dataloader),
    ("dicom", bench_dicom.run),
]


def main() -> None:
    only = set(sys.argv[1:])
    sections = []
    for name, fn in BENCHES:
        if only and name not in only:
            continue
        print(f"== bench {name}", flush=True)
        text = fn()
        print(text, flush=True)
        sections.append(text)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if only and (HERE / "RESULTS.md").is_file():
        # re-running some benchmarks: keep the other sections as they were
        old = (HERE / "RESULTS.md").read_text().split("\n## ")[1:]
        kept = {sec.split(":", 1)[0].strip(): "## " + sec for sec in old}
        for text in sections:
            kept[text[3:].split(":", 1)[0].strip()] = text
        sections = [kept[name] for name, _ in BENCHES if name in kept]
    body = "\n".join(sections)
    (HERE / "RESULTS.md").write_text(
        "# voxlm benchmark results\n\n"
        f"Written by `make bench` ({stamp}). Every ratio compares voxlm and the reference tool "
        "measured side by side in one run; absolute times vary with the machine.\n\n" + body
    )


if __name__ == "__main__":
    main()
