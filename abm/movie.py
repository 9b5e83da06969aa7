"""Movies of a run: one frame per snapshot, drawn headless with matplotlib, encoded by ffmpeg.

Frames are streamed: a first pass reads one snapshot plane at a time to fix each field's colour limits (so the
colour bar is the same in every frame), the second draws and encodes frame by frame. Memory therefore does not
grow with the number of frames. The video goes to a hidden temporary file in the output directory and is
renamed into place only when complete, so Ctrl-C (or any error) leaves no partial file behind.

MP4 uses H.264 (yuv420p); GIF uses ffmpeg's GIF encoder. The ffmpeg binary comes with the ``imageio-ffmpeg``
wheel.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abm.io.reader import RunFileError
from abm.io.run import CELL_LAYERS, RunFile, open_run
from abm.plots import _AXIS_NAMES, LAYER_COLOURS, _field_unit, _pyplot, snapshot_planes, tissue_rgb

__all__ = ["MovieResult", "export_movie", "parse_axis", "parse_size"]

FORMATS = {".mp4": {"codec": "libx264", "pix_fmt_out": "yuv420p", "quality": 7},
           ".gif": {"codec": "gif", "pix_fmt_out": "rgb8"}}
_PANEL_PX = 432  # default panel edge (pixels), a multiple of 16 for H.264 macro blocks


@dataclass
class MovieResult:
    """A written movie: its path, number of frames, frame size (width, height) and time span (min)."""

    path: Path
    frames: int
    size: tuple[int, int]
    times_min: tuple[float, float]


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` in pixels, e.g. ``"1280x720"``."""
    w, sep, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        width = height = 0
    if not sep or width < 16 or height < 16:
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, each at least 16, e.g. 1280x720")
    return width, height


def parse_axis(text) -> int:
    """An axis given as ``x``/``y``/``z`` or ``0``/``1``/``2``."""
    key = str(text).lower()
    if key in _AXIS_NAMES:
        return _AXIS_NAMES.index(key)
    if key in ("0", "1", "2"):
        return int(key)
    raise ValueError(f"axis {text!r}: expected x, y or z (or 0, 1, 2)")


def _check_layers(run: RunFile, layers) -> list[str]:
    fields = run.field_names()
    valid = [*CELL_LAYERS, *fields]
    if layers is None:
        return valid
    layers = list(dict.fromkeys(layers))
    unknown = [name for name in layers if name not in valid]
    if unknown or not layers:
        raise RunFileError(
            f"{run.path}: unknown layer {', '.join(repr(n) for n in unknown) or '(none given)'}; "
            f"valid layers: {', '.join(valid)}"
        )
    return layers


def _frame_indices(run: RunFile, start, end) -> list[int]:
    if not len(run):
        raise RunFileError(f"{run.path}: holds no snapshot")
    lo = run.times[0] if start is None else float(start)
    hi = run.times[-1] if end is None else float(end)
    chosen = [i for i, t in enumerate(run.times) if lo - 1e-6 <= t <= hi + 1e-6]
    if not chosen:
        raise RunFileError(
            f"{run.path}: no snapshot between t = {lo:g} and {hi:g} min; snapshots span "
            f"{run.times[0]:g}-{run.times[-1]:g} min"
        )
    return chosen


def _colour_limits(run, indices, fields, view, axis, index, bar) -> dict[str, tuple[float, float]]:
    """Global (min, max) of each field's displayed plane over the frames, one snapshot at a time."""
    limits = {name: [np.inf, -np.inf] for name in fields}
    for i in indices:
        planes = snapshot_planes(run, i, fields, view, axis, index)
        for name, data in planes.items():
            finite = data[np.isfinite(data)]
            if finite.size:
                limits[name][0] = min(limits[name][0], float(finite.min()))
                limits[name][1] = max(limits[name][1], float(finite.max()))
        bar.update(1)
    out = {}
    for name, (lo, hi) in limits.items():
        if not np.isfinite(lo):
            lo, hi = 0.0, 1.0
        if hi <= lo:
            hi = lo + max(abs(lo) * 1e-6, 1e-12)
        out[name] = (lo, hi)
    return out


class _FrameDrawer:
    """One figure reused for every frame: only image data and the title change between frames."""

    def __init__(self, run: RunFile, layers, limits, size, dpi, view, axis, index):
        from matplotlib.patches import Patch

        plt = _pyplot()
        self.plt = plt
        self.cells = [n for n in layers if n in CELL_LAYERS]
        self.fields = [n for n in layers if n not in CELL_LAYERS]
        n_panels = (1 if self.cells else 0) + len(self.fields)
        self.size = size or (_PANEL_PX * n_panels, _PANEL_PX)
        w, h = self.size
        self.fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi, layout="constrained")
        axes = self.fig.subplots(1, n_panels, squeeze=False)[0]
        blank = np.zeros(self._plane_shape(run, view, axis), dtype=np.float32)
        self.images = {}
        where = "" if run.ndim == 2 else (
            f" (max along {_AXIS_NAMES[axis]})" if view == "projection"
            else f" ({_AXIS_NAMES[axis]} = {run.shape[axis] // 2 if index is None else index})"
        )
        k = 0
        if self.cells:
            ax = axes[0]
            self.images["_cells"] = ax.imshow(np.ones((*blank.T.shape, 3), dtype=np.float32), origin="lower",
                                              interpolation="nearest")
            handles = [Patch(color=LAYER_COLOURS[n], label=n) for n in LAYER_COLOURS if n in self.cells]
            ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
            ax.set_title("cells" + where, fontsize=9)
            k = 1
        for name, ax in zip(self.fields, axes[k:]):
            lo, hi = limits[name]
            im = ax.imshow(blank.T, origin="lower", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            self.fig.colorbar(im, ax=ax, shrink=0.85, label=_field_unit(name))
            ax.set_title(name + where, fontsize=9)
            self.images[name] = im
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        self.title = self.fig.suptitle(" ")
        # Lay out once, then freeze: the layout must not move between frames.
        self.fig.canvas.draw()
        self.fig.set_layout_engine("none")

    @staticmethod
    def _plane_shape(run, view, axis):
        if run.ndim == 2:
            return run.shape
        return tuple(n for a, n in enumerate(run.shape) if a != axis)

    def draw(self, planes: dict, time_min: float) -> np.ndarray:
        """Render one frame; returns an RGB uint8 array of shape (height, width, 3)."""
        if self.cells:
            rgb = tissue_rgb({n: planes[n] for n in self.cells})
            self.images["_cells"].set_data(np.transpose(rgb, (1, 0, 2)))
        for name in self.fields:
            self.images[name].set_data(planes[name].T)
        self.title.set_text(f"t = {time_min:g} min ({time_min / 1440:.2f} d)")
        self.fig.canvas.draw()
        buf = np.asarray(self.fig.canvas.buffer_rgba())[..., :3]
        w, h = self.size
        if buf.shape[:2] != (h, w):  # guard against rounding of figure inches to pixels
            frame = np.full((h, w, 3), 255, dtype=np.uint8)
            hh, ww = min(h, buf.shape[0]), min(w, buf.shape[1])
            frame[:hh, :ww] = buf[:hh, :ww]
            return frame
        return np.ascontiguousarray(buf)

    def close(self) -> None:
        """Release the figure."""
        self.plt.close(self.fig)


def export_movie(
    path,
    out,
    *,
    layers=None,
    start: float | None = None,
    end: float | None = None,
    fps: float = 5.0,
    size: tuple[int, int] | None = None,
    dpi: int = 100,
    view: str = "slice",
    axis: int = 2,
    index: int | None = None,
    progress: bool = True,
) -> MovieResult:
    """Write a movie of a run file, one frame per snapshot.

    Parameters
    ----------
    path : path-like
        Run file.
    out : path-like
        Output video, ``.mp4`` or ``.gif``.
    layers : list of str, optional
        Cell layers (``tumour``, ``necrotic``, ``vessels``; drawn together in one panel) and fields (one panel
        each, colour map with a colour bar fixed across frames). Default: all.
    start, end : float, optional
        Time range (min) of the frames; default the whole run.
    fps : float
        Frames per second.
    size : (int, int), optional
        Frame size in pixels (width, height); default 432 px per panel by 432 px. MP4 sizes are rounded up
        to even numbers (H.264 with 4:2:0 chroma needs them).
    dpi : int
        Resolution of the drawing (text and line size relative to the frame).
    view : {"slice", "projection"}
        For 3-D runs: a plane across ``axis`` at ``index`` (default the middle), or the maximum projection
        along ``axis``. Ignored for 2-D runs.
    axis : int
        Axis (0, 1, 2) cut or projected in 3-D.
    index : int, optional
        Slice index in 3-D.
    progress : bool
        Show a progress bar (scan pass, then frames).

    Returns
    -------
    MovieResult

    Raises
    ------
    abm.io.RunFileError
        If the file is unusable, a layer is unknown (the message lists the valid ones), no snapshot lies in
        the time range or the 3-D slice is outside the grid.
    ValueError
        If the output format is not ``.mp4`` or ``.gif``, or ``fps`` is not positive.
    """
    import imageio_ffmpeg
    from tqdm import tqdm

    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: unsupported movie format '{out.suffix}'; use .mp4 or .gif")
    if not fps > 0:
        raise ValueError(f"--fps {fps}: must be positive")
    if view not in ("slice", "projection"):
        raise ValueError(f"view {view!r}: expected 'slice' or 'projection'")
    with open_run(path) as run:
        layers = _check_layers(run, layers)
        indices = _frame_indices(run, start, end)
        if run.ndim == 3 and view == "slice" and index is not None and not 0 <= index < run.shape[axis]:
            raise RunFileError(
                f"{run.path}: slice index {index} is outside axis {_AXIS_NAMES[axis]} (0-{run.shape[axis] - 1})"
            )
        fields = [n for n in layers if n not in CELL_LAYERS]
        if size is not None and out.suffix.lower() == ".mp4":
            size = (size[0] + size[0] % 2, size[1] + size[1] % 2)  # yuv420p needs even sizes
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        bar = tqdm(total=len(indices) * (2 if fields else 1), unit="frame", disable=not progress,
                   dynamic_ncols=True, desc="scanning")
        drawer = writer = None
        try:
            limits = _colour_limits(run, indices, fields, view, axis, index, bar)
            drawer = _FrameDrawer(run, layers, limits, size, dpi, view, axis, index)
            w, h = drawer.size
            writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, macro_block_size=1,
                                                 ffmpeg_log_level="error", **fmt)
            writer.send(None)
            bar.set_description("frames")
            for i in indices:
                planes = snapshot_planes(run, i, layers, view, axis, index)
                writer.send(drawer.draw(planes, float(run.times[i])))
                bar.update(1)
            writer.close()
            writer = None
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o666 & ~umask)  # mkstemp creates 0600; give the video the usual permissions
            os.replace(tmp, out)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
            if drawer is not None:
                drawer.close()
        return MovieResult(out, len(indices), (w, h), (float(run.times[indices[0]]), float(run.times[indices[-1]])))
