# Redraws Easel's icon at any size from its geometry (in 512-px units), 4x supersampled:
#   python scripts/make_icon.py 1024 assets/icon-1024.png   (needs pillow and numpy)
# assets/icon.png (512, the window's icon) and assets/icon-1024.png (the Mac app's icon
# source) were made by it.
import sys
import numpy as np
from PIL import Image

size = int(sys.argv[1]); out = sys.argv[2]
ss = 4
n = size * ss
s = n / 512.0
y, x = np.mgrid[0:n, 0:n].astype(np.float64)
x = (x + 0.5) / s; y = (y + 0.5) / s
img = np.zeros((n, n, 4))
def paint(mask, rgb):
    img[mask] = [*rgb, 255]
# rounded square 36..476, radius 60
cx = np.clip(x, 96, 416); cy = np.clip(y, 96, 416)
paint(((x - cx) ** 2 + (y - cy) ** 2 <= 60 ** 2) & (x >= 36) & (x <= 476) & (y >= 36) & (y <= 476), (246, 238, 222))
for (px, py, rgb) in [(170, 170, (52, 101, 164)), (256, 150, (236, 178, 46)), (342, 170, (86, 160, 90))]:
    paint((x - px) ** 2 + (y - py) ** 2 <= 37.5 ** 2, rgb)
xc = np.clip(x, 105, 10_000)
top = 272.5 - 59.5 * np.cos(np.pi * (xc - 330) / 225)
paint((x >= 91) & (x <= 419) & (y >= top) & (y <= top + 55), (214, 83, 60))
im = Image.fromarray(img.astype(np.uint8), 'RGBA').resize((size, size), Image.LANCZOS)
im.save(out, optimize=True)
