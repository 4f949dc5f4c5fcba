"""Reads the event file kiln_summary_tool wrote with the tensorboard package's own loader and checks
every value. Prints one 'skipped' line (CTest's skip pattern) when tensorboard is not installed.

usage: python3 tensorboard_check.py <kiln_summary_tool> <log_dir>
"""
import glob
import os
import shutil
import subprocess
import sys

try:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.event_pb2 import Event
except ImportError:
    print("tensorboard check skipped: the tensorboard Python package is not installed (pip install tensorboard)")
    sys.exit(0)


def main():
    tool, log_dir = sys.argv[1], sys.argv[2]
    shutil.rmtree(log_dir, ignore_errors=True)
    path = subprocess.run([tool, log_dir], check=True, capture_output=True, text=True).stdout.strip()
    files = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    assert files == [path], (files, path)

    # The raw loader checks every record's length and data CRCs; the protobuf parser the fields.
    events = [Event.FromString(record) for record in RawEventFileLoader(path).Load()]
    assert events[0].file_version == "brain.Event:2", events[0]
    scalars, histos = {}, {}
    for e in events[1:]:
        for v in e.summary.value:
            if v.HasField("histo"):
                histos[v.tag] = (e.step, e.wall_time, v.histo)
            else:
                scalars.setdefault(v.tag, []).append((e.step, e.wall_time, v.simple_value))
    want_loss = [(s, 1000.0 + s, 2.0 / (s + 1)) for s in range(5)] + [(-7, 2000.0, -0.25)]
    got_loss = scalars["loss/train"]
    assert len(got_loss) == len(want_loss), got_loss
    for (s, t, v), (ws, wt, wv) in zip(got_loss, want_loss):
        assert s == ws and t == wt and abs(v - wv) <= 1e-6 * abs(wv), (s, t, v, ws, wt, wv)
    assert [s for s, _, _ in scalars["lr"]] == list(range(5))
    assert all(abs(v - 1e-3 * s) < 1e-9 for s, _, v in scalars["lr"]), scalars["lr"]

    step, wall, h = histos["weights"]
    assert (step, wall) == (10, 3000.0)
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0, 99, 100, 4950, sum(i * i for i in range(100))), h
    assert list(h.bucket_limit) == [24.75, 49.5, 74.25, 99.0], h.bucket_limit
    assert list(h.bucket) == [25, 25, 25, 25], h.bucket
    step, _, h = histos["tensor"]
    assert step == 11 and list(h.bucket_limit) == [1.5] and list(h.bucket) == [3], h

    # What `tensorboard --logdir` shows: the accumulator the dashboard is built on.
    acc = EventAccumulator(log_dir)
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["loss/train", "lr"], acc.Tags()
    assert sorted(acc.Tags()["histograms"]) == ["tensor", "weights"], acc.Tags()
    shown = [(e.step, round(e.value, 6)) for e in acc.Scalars("loss/train")]
    assert shown == [(s, round(v, 6)) for s, _, v in want_loss], shown
    assert acc.Histograms("weights")[0].histogram_value.bucket == [25, 25, 25, 25]
    print(f"tensorboard read {len(events)} events from {os.path.basename(path)}: all values match")


main()
