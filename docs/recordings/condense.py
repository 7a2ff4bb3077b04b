"""Condense a record_tmux.sh frames file into what a reader needs: every frame of the first 20 s,
the frame in which each step line first appears, the first frame of each new label on the bar
(progress inside a step), one frame a minute otherwise (the bar's clock), and the last frame.
Frames after the first are shown as their changed tail: the new lines and the bar.

Usage: python docs/recordings/condense.py FRAMES_FILE > docs/recordings/NAME.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADER = re.compile(r"^=== t=\s*([\d.]+)s .*===$")
STEP = re.compile(r"^  \[\d+/\d+\] ")
BAR = re.compile(r"^(?P<label>.*?) ━")


def frames(path: str) -> list[tuple[str, float, list[str]]]:
    found: list[tuple[str, float, list[str]]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        header = HEADER.match(line)
        if header:
            found.append((line, float(header[1]), []))
        elif found:
            found[-1][2].append(line)
    return found


def main(path: str) -> None:
    all_frames = frames(path)
    shown_steps: set[str] = set()
    labels: set[str] = set()
    last_minute = -1
    previous: list[str] = []
    for index, (header, seconds, lines) in enumerate(all_frames):
        steps = {line for line in lines if STEP.match(line)}
        bar = next((BAR.match(line) for line in reversed(lines) if BAR.match(line)), None)
        label = bar["label"].split(":")[0:2] if bar else None
        label_key = ":".join(label) if label else ""
        keep = (
            seconds <= 20
            or steps - shown_steps
            or (label_key and label_key not in labels)
            or int(seconds // 60) != last_minute
            or index == len(all_frames) - 1
        )
        shown_steps |= steps
        if label_key:
            labels.add(label_key)
        if not keep:
            continue
        last_minute = int(seconds // 60)
        common = 0
        while common < min(len(lines), len(previous)) - 1 and lines[common] == previous[common]:
            common += 1
        full = index == 0 or index == len(all_frames) - 1
        print(header)
        if not full and common:
            print(f"   ({common} unchanged lines above)")
        print("\n".join(lines if full else lines[common:]))
        previous = lines


if __name__ == "__main__":
    main(sys.argv[1])
