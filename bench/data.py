"""Where the development machines keep the project's training material (``../shared/data``).

Benches and the figure tools default to it; a user without it passes their own
photos, paintings and video (every such default is an option). Tests never use it.
"""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTOS = SHARED_DATA / "content"  # 344 photos in folders by source package
PAINTINGS = SHARED_DATA / "styles"  # the public-domain paintings
VIDEO = SHARED_DATA / "video" / "vtest.avi"  # OpenCV's street video (credited in docs/CREDITS.md)
