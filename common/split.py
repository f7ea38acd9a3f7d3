"""The held-out split of the training material: what training never sees and the benches judge on.

Photos: a photo is held out when a stable hash of its path relative to the
content folder falls in the last ``1/HOLDOUT_EVERY`` of the range, so the
split does not depend on the order files are listed in, and a photo added
later does not move any other. Video: the first ``VIDEO_TRAIN_FRACTION`` of
the frames may be trained on, the rest is held out. Standard library only.
"""

from __future__ import annotations

import hashlib

HOLDOUT_EVERY = 8  # one photo in eight is held out
VIDEO_TRAIN_FRACTION = 0.6  # the first 60 % of a video's frames are for training, the rest held out


def held_out(relative_path: str) -> bool:
    """Whether the photo at ``relative_path`` (posix, relative to the content folder) is held out."""
    digest = hashlib.sha256(relative_path.replace("\\", "/").encode()).digest()
    return int.from_bytes(digest[:4], "big") % HOLDOUT_EVERY == 0


def video_train_frames(total: int) -> range:
    """The frame indices of a ``total``-frame video that training may use."""
    return range(int(total * VIDEO_TRAIN_FRACTION))


def video_held_out_frames(total: int) -> range:
    """The frame indices of a ``total``-frame video that only the benches use."""
    return range(int(total * VIDEO_TRAIN_FRACTION), total)
