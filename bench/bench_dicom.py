"""bench/dicom: reading a DICOM series of 300 slices of 512 x 512 (int16, explicit VR little
endian, rescaled, file names shuffled): voxlm ``load_image(folder)`` vs SimpleITK's
``ImageSeriesReader`` (GDCM) vs pydicom (``dcmread`` every file, sort by ImagePositionPatient,
stack, RescaleSlope/Intercept). Each reader in its own child process; medians of 3 reads after
a warm-up (files in the page cache). voxlm's result equals SimpleITK's (tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

N_SLICES = 300

CHILD = r"""
import json, statistics, sys, time, glob
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
side, folder = sys.argv[1], sys.argv[2]
import numpy as np
if side == "voxlm":
    import voxlm
    def run():
        return voxlm.load_image(folder).data
elif side == "sitk":
    import SimpleITK as sitk
    def run():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(folder))
        return sitk.GetArrayViewFromImage(r.Execute())
else:
    import pydicom
    def run():
        ds = [pydicom.dcmread(p) for p in glob.glob(folder + "/*")]
        ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        a = np.stack([d.pixel_array for d in ds]).astype(np.float32)
        return a * float(ds[0].RescaleSlope) + float(ds[0].RescaleIntercept)
base_kb = status_kb("VmRSS")  # after the imports, before any read
out = run()
assert out.size == 512 * 512 * int(sys.argv[3])
del out  # each read's result is dropped before the next: the peak is one read's
times, cpu = [], []
for _ in range(3):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
print(json.dumps({"s": statistics.median(times), "runs": times, "cpu_s": statistics.median(cpu),
                  "peak_mb": status_kb("VmHWM") / 1024, "base_mb": base_kb / 1024}))
"""


def make_series(folder: str) -> None:
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    uid = generate_uid()
    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    body = (xx**2 + (yy * 1.3) ** 2) < 0.8
    order = rng.permutation(N_SLICES)
    for k in range(N_SLICES):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        arr = (np.where(body, 1064, 24) + rng.normal(0, 20, body.shape)).astype(np.int16)
        ds.Rows, ds.Columns = 512, 512
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
        ds.PixelData = arr.tobytes()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.ImagePositionPatient = ["-180", "-180", f"{k * 1.25:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.703125", "0.703125"]
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.InstanceNumber = int(order[k]) + 1
        ds.save_as(os.path.join(folder, f"IM{order[k]:05d}.dcm"), enforce_file_format=True)


def run() -> str:
    from common import machine

    load0 = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as d:
        make_series(d)
        size_mb = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) / 1e6
        res = {}
        for side in ("voxlm", "sitk", "pydicom"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, side, d, str(N_SLICES)],
                capture_output=True,
                text=True,
                check=True,
            )
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    v, s, p = res["voxlm"], res["sitk"], res["pydicom"]
    lines = [
        f"## dicom: a {N_SLICES}-slice 512x512 CT series, voxlm vs SimpleITK ImageSeriesReader vs "
        "pydicom stacking",
        "",
        f"Machine: {machine()}. {N_SLICES} files ({size_mb:.0f} MB), int16, explicit VR little "
        "endian, shuffled names; float32 volume out (voxlm, pydicom) / SimpleITK's int16 image + "
        "array view. Medians of 3 reads, warm page cache, each reader in its own process; each "
        "read's result is dropped before the next. Peak = VmHWM; base = VmRSS after the imports "
        "(voxlm imports torch); the read's own memory = peak - base (the output volume is 315 MB "
        "as float32, 157 MB as int16).",
        "",
        "| reader | s / series | CPU s / series | slices/s | vs SimpleITK | peak MB | base MB "
        "| peak - base MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (
        ("voxlm load_image(folder)", v),
        ("SimpleITK ImageSeriesReader", s),
        ("pydicom dcmread + sort + stack", p),
    ):
        lines.append(
            f"| {name} | {r['s']:.2f} | {r['cpu_s']:.2f} | {N_SLICES / r['s']:.0f} "
            f"| {s['s'] / r['s']:.2f}x | {r['peak_mb']:.0f} | {r['base_mb']:.0f} "
            f"| {r['peak_mb'] - r['base_mb']:.0f} |"
        )
    lines.append(
        f"_Load average (1 min) {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(the 2 cores are shared with other jobs: the ratios are indicative)._"
    )
    lines.append("")
    lines += [
        "",
        f"**voxlm / SimpleITK: {s['s'] / v['s']:.1f}x** (goal: >= 2x); voxlm / pydicom: "
        f"{p['s'] / v['s']:.1f}x; the read's own memory (peak - base): voxlm "
        f"{v['peak_mb'] - v['base_mb']:.0f} MB, SimpleITK {s['peak_mb'] - s['base_mb']:.0f} MB "
        f"({(v['peak_mb'] - v['base_mb']) / (s['peak_mb'] - s['base_mb']):.2f}x).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    print(run())
