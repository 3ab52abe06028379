"""bench/volume: CT preprocessing throughput and peak memory, voxlm against MONAI and against
nibabel + scipy, in one run (each pipeline in its own child process; medians of 3 passes).

Data: synthetic CT volumes, int16 .nii.gz, 512 x 512 x ~250, half axis-aligned (LPS-like) and
half oblique (rotated affine). Pipeline: load -> reorient to RAS -> 1.5 mm spacing (trilinear)
-> HU window -160..240 onto [0, 1] (clipped) -> trilinear resize to 32 x 256 x 256 (voxlm's
result equals MONAI's chain to 1e-4, tested). The floor: decompressing the same files with zlib
(what nibabel uses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

N_FILES = 4
DEPTHS = [240, 250, 256, 260]

CHILD = r"""
import json, statistics, sys, time, os
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
side, paths = sys.argv[1], sys.argv[2:]
import numpy as np
if side == "voxlm":
    import voxlm
    from voxlm import transforms as T
    from voxlm.data import load_batch
    pipe = T.Compose([T.Orientation("RAS"), T.Spacing(1.5),
                      T.ScaleIntensityRange(-160, 240, 0, 1, clip=True), T.Resize((32, 256, 256))])
    def run():
        for p in paths:
            load_batch([p], pipe)
elif side == "voxlm_batch":
    from voxlm import transforms as T
    from voxlm.data import load_batch
    pipe = T.Compose([T.Orientation("RAS"), T.Spacing(1.5),
                      T.ScaleIntensityRange(-160, 240, 0, 1, clip=True), T.Resize((32, 256, 256))])
    def run():
        load_batch(paths, pipe, num_threads=2)
elif side == "monai":
    from monai import transforms as mt
    pipe = mt.Compose([mt.LoadImage(image_only=True, reader="NibabelReader"),
                       mt.EnsureChannelFirst(), mt.Orientation("RAS"),
                       mt.Spacing(1.5, mode="bilinear"),
                       mt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                       mt.Resize((32, 256, 256), mode="trilinear")])
    def run():
        for p in paths:
            pipe(p)
elif side == "nibabel_scipy":
    import nibabel as nib
    from scipy import ndimage
    def run():
        for p in paths:
            img = nib.as_closest_canonical(nib.load(p))
            a = img.get_fdata(dtype=np.float32)
            a = ndimage.zoom(a, [z / 1.5 for z in img.header.get_zooms()[:3]], order=1)
            a = np.clip((a + 160) / 400, 0, 1)
            ndimage.zoom(a, [o / i for o, i in zip((32, 256, 256), a.shape)], order=1)
else:  # decompress only
    import zlib
    def run():
        for p in paths:
            with open(p, "rb") as f:
                zlib.decompress(f.read(), 31)
run()  # warm-up (imports, page cache)
times = []
for _ in range(3):
    t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"s": statistics.median(times), "runs": times, "peak_mb": hwm_kb() / 1024}))
"""


def make_data(d: str) -> list[str]:
    import numpy as np

    from voxlm.volume import Volume, save_volume

    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_FILES):
        z = DEPTHS[i % len(DEPTHS)]
        zz, yy, xx = np.meshgrid(
            np.linspace(-1, 1, z), np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij"
        )
        body = (xx**2 + (yy * 1.3) ** 2) < 0.8
        vol = np.where(body, 40, -1000).astype(np.int16)
        vol[body & (xx**2 + yy**2 < 0.05)] = 700
        vol = vol + rng.normal(0, 20, vol.shape).astype(np.int16)
        data = np.ascontiguousarray(vol.transpose(2, 1, 0))  # x, y, z
        aff = np.diag([-0.7, -0.7, 1.25, 1.0])
        if i % 2:
            c, s = np.cos(0.2), np.sin(0.2)
            aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
        p = os.path.join(d, f"ct{i}.nii.gz")
        save_volume(Volume(data, aff), p, compress_level=1)
        paths.append(p)
    return paths


def run() -> str:
    from common import machine

    with tempfile.TemporaryDirectory() as d:
        paths = make_data(d)
        size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
        res = {}
        for side in ("decompress", "voxlm", "voxlm_batch", "monai", "nibabel_scipy"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, side, *paths],
                capture_output=True,
                text=True,
                check=True,
            )
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    n = N_FILES
    v, vb, m, ns, dz = (
        res["voxlm"],
        res["voxlm_batch"],
        res["monai"],
        res["nibabel_scipy"],
        res["decompress"],
    )
    lines = [
        "## volume: CT preprocessing (load -> RAS -> 1.5 mm -> HU window -> resize 32x256x256), "
        "voxlm vs MONAI vs nibabel+scipy",
        "",
        f"Machine: {machine()}. {n} synthetic int16 CT volumes 512x512x{DEPTHS[:n]}, gzip level 1 "
        f"({size_mb:.0f} MB on disk), half oblique. Medians of 3 passes over all files; each tool "
        "in its own process (peak = VmHWM).",
        "",
        "| pipeline | s / pass | volumes/s | vs MONAI | peak MB |",
        "|---|---|---|---|---|",
    ]
    for name, r in [
        ("zlib decompress only (floor), one file at a time", dz),
        ("voxlm, one file at a time", v),
        ("voxlm load_batch, 2 files at a time", vb),
        ("MONAI 1.6, one file at a time", m),
        ("nibabel + scipy.ndimage.zoom", ns),
    ]:
        lines.append(
            f"| {name} | {r['s']:.2f} | {n / r['s']:.2f} | {m['s'] / r['s']:.2f}x "
            f"| {r['peak_mb']:.0f} |"
        )
    lines += [
        "",
        f"**voxlm / MONAI throughput: {m['s'] / vb['s']:.1f}x with load_batch on the 2 cores, "
        f"{m['s'] / v['s']:.1f}x one file at a time** (goal: at least 5x), peak memory "
        f"{vb['peak_mb'] / m['peak_mb']:.2f} / {v['peak_mb'] / m['peak_mb']:.2f} of MONAI's; "
        "one file at a time "
        f"voxlm takes {v['s'] / dz['s']:.2f}x the time of just decompressing the files with zlib "
        "(goal: within 2x).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the M3D CT chain through DataLoader workers: VolumeDataset (fused Rust path) vs MONAI Dataset

# files per epoch (--files=N): with 4, forking the 2 workers and their start-up (~0.23 CPU s per
# epoch for a dataset returning zeros) was a third of voxlm's epoch, a cost a real dataset of
# hundreds of volumes pays once per epoch; 12 keeps MONAI's side at well under a minute
DL_FILES = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--files=")), 12)
DL_SHAPE = (384, 384, 96)  # modest: 2 shared cores

DL_CHILD = r"""
import json, resource, statistics, sys, time
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
side, paths = sys.argv[1], sys.argv[2:]
import torch
if side == "voxlm":
    from voxlm import transforms as T
    from voxlm.data import VolumeDataset
    ds = VolumeDataset(paths, T.Compose([T.Orientation("RAS"), T.Spacing(1.5),
                                        T.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                                        T.CropForeground(), T.Resize((32, 256, 256))]))
else:
    from monai import transforms as mt
    from monai.data import Dataset
    ds = Dataset(paths, mt.Compose([
        mt.LoadImage(image_only=True, reader="NibabelReader"), mt.EnsureChannelFirst(),
        mt.Orientation("RAS"), mt.Spacing(1.5, mode="bilinear"),
        mt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
        mt.CropForeground(select_fn=lambda x: x > 0, allow_smaller=True),
        mt.Resize((32, 256, 256), mode="trilinear"),
    ]))
def run():
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    n = 0
    for x in loader:
        assert tuple(x.shape[-3:]) == (32, 256, 256)
        n += 1
    return n
def cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
run()
times, cpus = [], []
for _ in range(3):
    t0, c0 = time.perf_counter(), cpu()
    run()
    times.append(time.perf_counter() - t0); cpus.append(cpu() - c0)
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({
    "s": statistics.median(times),
    "runs": times,
    "cpu_s": statistics.median(cpus),
    "main_mb": hwm_kb() / 1024,
    "worker_mb": child_kb / 1024,
}))
"""

# per-file CPU time in one process, one thread (as in a DataLoader worker), voxlm and MONAI
# alternating file by file: axis-aligned (even files) vs oblique (odd files)
PERFILE_CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(1)
from voxlm import transforms as T
from voxlm.data import transform_path
from monai import transforms as mt
paths = sys.argv[1:]
vx = T.Compose([T.Orientation("RAS"), T.Spacing(1.5),
                T.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                T.CropForeground(), T.Resize((32, 256, 256))])
mo = mt.Compose([mt.LoadImage(image_only=True, reader="NibabelReader"), mt.EnsureChannelFirst(),
                 mt.Orientation("RAS"), mt.Spacing(1.5, mode="bilinear"),
                 mt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                 mt.CropForeground(select_fn=lambda x: x > 0, allow_smaller=True),
                 mt.Resize((32, 256, 256), mode="trilinear")])
sides = {"voxlm": lambda p: transform_path(p, vx, 1), "monai": lambda p: mo(p)}
for f in sides.values():
    f(paths[0])  # warm-up
res = {k: {"axis": [], "oblique": []} for k in sides}
for _ in range(3):
    for i, p in enumerate(paths):
        for k, f in sides.items():
            c0 = time.process_time(); f(p); res[k]["oblique" if i % 2 else "axis"].append(
                time.process_time() - c0)
print(json.dumps({k: {g: statistics.median(v) for g, v in d.items()} for k, d in res.items()}))
"""


def make_dl_data(d: str, noisy: bool) -> list[str]:
    import numpy as np

    from voxlm.volume import Volume, save_volume

    rng = np.random.default_rng(1)
    x, y, z = DL_SHAPE
    paths = []
    for i in range(DL_FILES):
        zz, yy, xx = np.meshgrid(
            np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij"
        )
        body = (xx**2 + (yy * 1.3) ** 2) < 0.8
        vol = np.where(body, 40, -1000).astype(np.int16)
        if noisy:  # incompressible: every voxel random within the body's range
            vol = vol + rng.integers(-400, 400, vol.shape).astype(np.int16)
        else:
            vol = vol + rng.normal(0, 20, vol.shape).astype(np.int16)
        aff = np.diag([-0.7, -0.7, 1.25, 1.0])
        if i % 2:
            c, s = np.cos(0.2), np.sin(0.2)
            aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
        p = os.path.join(d, f"{'noisy' if noisy else 'ct'}{i}.nii.gz")
        save_volume(Volume(np.ascontiguousarray(vol.transpose(2, 1, 0)), aff), p, compress_level=1)
        paths.append(p)
    return paths


def run_dataloader() -> str:
    from common import machine

    load0 = os.getloadavg()[0]

    rows = []
    cpu_rows = []
    ratios = {}
    with tempfile.TemporaryDirectory() as d:
        for noisy in (False, True):
            paths = make_dl_data(d, noisy)
            size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
            res = {}
            for side in ("voxlm", "monai"):
                out = subprocess.run(
                    [sys.executable, "-c", DL_CHILD, side, *paths],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            out = subprocess.run(
                [sys.executable, "-c", PERFILE_CHILD, *paths],
                capture_output=True,
                text=True,
                check=True,
            )
            pf = json.loads(out.stdout.strip().splitlines()[-1])
            v, m = res["voxlm"], res["monai"]
            kind = "noisy (incompressible)" if noisy else "smooth"
            for g in ("axis", "oblique"):
                cpu_rows.append(
                    f"| {kind} | {'axis-aligned' if g == 'axis' else 'oblique (rotated 0.2 rad)'} "
                    f"| {pf['voxlm'][g]:.3f} | {pf['monai'][g]:.3f} "
                    f"| {pf['monai'][g] / pf['voxlm'][g]:.2f}x |"
                )
            ratios[kind] = (
                m["s"] / v["s"],
                v["worker_mb"] / m["worker_mb"],
                (v["main_mb"] + 2 * v["worker_mb"]) / (m["main_mb"] + 2 * m["worker_mb"]),
            )
            for name, r in (("voxlm VolumeDataset", v), ("MONAI Dataset", m)):
                rows.append(
                    f"| {kind}, {size_mb:.0f} MB | {name} | {r['s']:.2f} "
                    f"| {DL_FILES / r['s']:.2f} | "
                    f"{m['s'] / r['s']:.2f}x | {r['cpu_s']:.2f} | {m['cpu_s'] / r['cpu_s']:.2f}x "
                    f"| {r['main_mb']:.0f} | {r['worker_mb']:.0f} |"
                )
    lines = [
        "## volume_dataloader: the M3D CT chain through DataLoader(num_workers=2), "
        "voxlm VolumeDataset vs MONAI Dataset",
        "",
        f"Machine: {machine()}. {DL_FILES} synthetic int16 CT volumes "
        f"{DL_SHAPE[0]}x{DL_SHAPE[1]}x{DL_SHAPE[2]} "
        "(.nii.gz level 1; modest sizes: the machine's 2 cores are shared), half oblique; smooth "
        "(body + noise sd 20) and incompressible (uniform noise +-400 HU). Chain: Orientation "
        "RAS -> Spacing 1.5 mm -> window -160..240 -> CropForeground -> Resize 32x256x256; "
        "batch_size 1, num_workers 2, medians of 3 epochs after a warm-up epoch. Peak: VmHWM of "
        "the main process and the largest worker's max RSS.",
        "",
        "| data | dataset | s / epoch | volumes/s | vs MONAI | CPU s / epoch (main + workers) "
        "| CPU vs MONAI | main MB | worker MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Per-file CPU time (process_time, one thread as in a worker, torch 1 thread; voxlm and "
        "MONAI alternating file by file in one process, medians of 3 passes): the axis-aligned "
        "and the oblique half of the files. MONAI's Spacing keeps an oblique scan's directions, "
        "so its spacing resample is axis-aligned in voxel space for both halves.",
        "",
        "| data | files | voxlm CPU s / file | MONAI CPU s / file | vs MONAI |",
        "|---|---|---|---|---|",
        *cpu_rows,
        "",
    ]
    lines.append(
        f"_Load average (1 min) {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(the 2 cores are shared with other jobs: the ratios are indicative)._"
    )
    lines.append("")
    for kind, (r, wm, tot) in ratios.items():
        lines.append(
            f"**{kind}: voxlm / MONAI throughput {r:.1f}x** (goal: >= 5x), worker peak memory "
            f"{wm:.2f} of MONAI's, main + 2 workers {tot:.2f} of MONAI's."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    if "--dataloader" not in sys.argv[1:]:  # --dataloader: only the DataLoader section
        print(run())
    print(run_dataloader())
