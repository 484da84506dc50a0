"""Peak memory of proxy training against dataset size: is it flat, as a 100k-image folder needs?

The trainer converts one batch at a time from the data's memory-mapped cache (evaluators.data): the split is
never copied into memory as float32 (which was 2 x 4 bytes per pixel per worker: 1.5 GB for 60k images at
32 px). This writes image folders of N = 6,000 / 20,000 / 60,000 Fashion-MNIST training images (PNG, 28x28,
in class subfolders; shapes from tests/shapes.py when Fashion-MNIST is not installed), lets bneck decode each
once into its cache, then trains MobileNetV3-Small for 40 steps in a fresh process per size and reports that
process's peak RSS. Flat means the peak grows by far less than the data's float32 size would.

Usage: python benchmarks/trainer_memory.py [--sizes 6000 20000 60000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

CHILD = """
import json, resource, sys, time
from evaluators import ProxyTrainer, Recipe, load_data
import search_space as ss

def status():  # anonymous memory (the process's own) and file-backed pages (the memory map, reclaimable)
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}

data = load_data(sys.argv[1], resolution=32, progress=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
loaded = status()
t = time.perf_counter()
res = ProxyTrainer(Recipe(steps=40, threads=2)).evaluate(ss.mobilenet_v3_small(), data)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
after = status()
print(json.dumps({"train": len(data.y_train), "val": len(data.y_val), "rss_after_load_mb": before,
                  "peak_rss_mb": peak, "anon_after_load_mb": loaded["RssAnon"], "anon_after_train_mb":
                  after["RssAnon"], "file_after_train_mb": after["RssFile"], "train_s": time.perf_counter() - t,
                  "top1": res.top1}))
"""


def make_folder(root: Path, n: int) -> str:
    from PIL import Image

    if (root / "done").is_file():
        return "fashion" if (root / "fashion").is_file() else "shapes"
    try:
        from evaluators.data import FASHION_CLASSES, load_fashion_split

        x, y = load_fashion_split("train")
        source = "fashion"
        for c in FASHION_CLASSES:
            (root / c.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        names = [c.replace("/", "-") for c in FASHION_CLASSES]
        for i in range(n):
            Image.fromarray(x[i]).save(root / names[int(y[i])] / f"{i:05d}.png")
        (root / "fashion").touch()
    except Exception:  # no Fashion-MNIST here (DataError): generated shapes
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from shapes import make_folder as shapes_folder

        shapes_folder(root, per_class=n // 10)
        source = "shapes"
    (root / "done").touch()
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[6000, 20000, 60000])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bneck-trainer-memory"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    env = {**os.environ, "BNECK_CACHE": str(work / "cache")}
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        source = make_folder(work / f"folder_{n}", n)
        made_s = time.perf_counter() - t
        proc = subprocess.run([sys.executable, "-c", CHILD, str(work / f"folder_{n}")], env=env, capture_output=True,
                              text=True, check=True)
        row = {"images": n, "source": source, "folder_s": made_s, **json.loads(proc.stdout.strip().splitlines()[-1])}
        row["float32_split_mb"] = row["train"] * 32 * 32 * 3 * 4 / 2**20  # what one float32 copy would take
        rows.append(row)
        print(f"{n:6d} images: peak RSS {row['peak_rss_mb']:.0f} MB; after training anonymous "
              f"{row['anon_after_train_mb']:.0f} MB + file-backed {row['file_after_train_mb']:.0f} MB (one float32 "
              f"copy of the split would be {row['float32_split_mb']:.0f} MB)", flush=True)
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    anon_growth = rows[-1]["anon_after_train_mb"] - rows[0]["anon_after_train_mb"]
    copy_growth = rows[-1]["float32_split_mb"] - rows[0]["float32_split_mb"]
    result = {"rows": rows, "peak_growth_mb": growth, "anon_growth_mb": anon_growth,
              "float32_copy_growth_mb": copy_growth, "flat": anon_growth < 0.1 * copy_growth}
    path = write("trainer_memory", result, args.out)
    print(f"from {rows[0]['images']} to {rows[-1]['images']} images: anonymous memory grows {anon_growth:.0f} MB, "
          f"peak RSS {growth:.0f} MB (memory-mapped pages, which the kernel reclaims); one float32 copy would grow "
          f"{copy_growth:.0f} MB: flat={result['flat']}; wrote {path}")


if __name__ == "__main__":
    main()
