"""All uint8 cut-offs of a quantised score map in one pass (numba kernels behind bcct.metrics).

For a cut-off ``c`` wsolevaluation runs ``cv2.findContours(q > c, RETR_TREE)``: one outer
contour per 8-connected foreground component and one hole contour per 4-connected
background component that does not reach the image border (OpenCV pads the image with
zeros).  The foreground sets ``q > c`` of successive cut-offs are nested, and so are the
background sets ``q <= c``, so two union-find sweeps give every contour of every cut-off:

* foreground, from value 255 down (8-connectivity): each component's bounding box, which
  is its outer contour's ``boundingRect``, and ``2 * (n4 + n3 / 2)``, where ``n4`` / ``n3``
  count the 2x2 pixel windows holding 4 / 3 of its pixels.  That is twice the shoelace
  area of the outer contour (``cv2.contourArea``) when the component has no hole: the
  contour runs through pixel centres with 8-neighbour steps, so a window with 4 pixels
  inside is a full unit square of the polygon, one with 3 a half square (diagonal cut)
  and one with 2 or fewer contributes nothing;
* background, from value 0 up (4-connectivity): each hole's pixel count and bounding box.
  A hole contour runs through the foreground pixels around the hole, so its
  ``boundingRect`` is the hole's box grown by one pixel on every side.

V2 (``multi_contour_eval``) scores every contour box, holes included.  V1 scores the first
contour of largest ``contourArea``.  Holes fill the outer polygon: with ``f`` the window
area of the component's own pixels, a hole ``H`` (box ``w x h`` pixels) adds between
``|H|`` and ``(w + 1)(h + 1)``, and a hole contour's own area is at most ``(w + 1)(h + 1)``.
Without holes the areas are exact and all contours are top-level, which findContours
lists in reverse raster order of their first pixel: ties go to the latest.  With holes, a
cut-off's V1 IoU is decided when every contour whose area bound reaches the largest lower
bound has the same IoU (in particular when only one does: the usual case); the other
cells (ties or near-ties next to holes, where the order depends on the nesting) are
flagged and bcct.metrics runs ``findContours`` for them alone.
"""

from __future__ import annotations

import numba as nb
import numpy as np

N_CUTS = 256  # cut-offs 0..255 (255 leaves no foreground)
_INT = np.int32
# root statistics, one row per root pixel (array of structs: one cache line per root)
X0, Y0, X1, Y1, SIZE, FIRST, EXTRA = range(7)
N_STATS = 8


def _window_gain_table() -> np.ndarray:
    """``gain[mask]``: 2x2 windows around a new pixel holding >= 3 present pixels, for the
    8-bit mask of present neighbours (bits NW, N, NE, W, E, SW, S, SE)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    windows = ((0, 1, 3), (1, 2, 4), (3, 5, 6), (4, 6, 7))
    return sum((1 + bits[:, list(w)].sum(1) >= 3).astype(np.int32) for w in windows).astype(np.int32)


WINDOW_GAIN = _window_gain_table()


@nb.njit(cache=True, nogil=True, inline="always")
def _find(parent, p):
    while parent[p] != p:
        parent[p] = parent[parent[p]]
        p = parent[p]
    return p


@nb.njit(cache=True, nogil=True, inline="always")
def best_iou(x0, y0, x1, y1, gt):
    """Max over GT boxes of the inclusive (+1) IoU, 0 for a non-positive union (as wsolevaluation)."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        iw = min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1
        ih = min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        union = area + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        iou = inter / union if union > 0 else 0.0
        if iou > best:
            best = iou
    return best


@nb.njit(cache=True, nogil=True)
def _sorted_pixels(q):
    """Padded pixel indices (a 1-pixel frame around ``q``) in ascending value order, their
    coordinates, and ``starts[v]`` of each value's run."""
    height, width = q.shape
    wp = width + 2
    starts = np.zeros(N_CUTS + 1, np.int64)
    for y in range(height):
        for x in range(width):
            starts[q[y, x] + 1] += 1
    for v in range(N_CUTS):
        starts[v + 1] += starts[v]
    fill = starts[:N_CUTS].copy()
    order = np.empty(height * width, _INT)
    xs = np.empty(height * width, _INT)
    ys = np.empty(height * width, _INT)
    for y in range(height):
        for x in range(width):
            k = fill[q[y, x]]
            fill[q[y, x]] = k + 1
            order[k] = (y + 1) * wp + x + 1
            xs[k] = x
            ys[k] = y
    return order, xs, ys, starts


@nb.njit(cache=True, nogil=True, inline="always")
def _link(cpar, st, ra, rb, roots, rootpos, nroots):
    """Merge component roots ``ra != rb`` by size; returns ``(new root, live root count)``."""
    if st[ra, SIZE] < st[rb, SIZE]:
        ra, rb = rb, ra
    cpar[rb] = ra
    st[ra, X0] = min(st[ra, X0], st[rb, X0])
    st[ra, Y0] = min(st[ra, Y0], st[rb, Y0])
    st[ra, X1] = max(st[ra, X1], st[rb, X1])
    st[ra, Y1] = max(st[ra, Y1], st[rb, Y1])
    st[ra, SIZE] += st[rb, SIZE]
    st[ra, FIRST] = min(st[ra, FIRST], st[rb, FIRST])
    st[ra, EXTRA] += st[rb, EXTRA]
    pos = rootpos[rb]  # swap-remove rb from the live roots
    nroots -= 1
    last = roots[nroots]
    roots[pos] = last
    rootpos[last] = pos
    return ra, nroots


@nb.njit(cache=True, nogil=True, inline="always")
def _present(label, nb_, neighbours, m):
    """Append ``nb_`` to ``neighbours`` when it is already in the sweep; returns the new count."""
    if label[nb_] >= 0:
        neighbours[m] = nb_
        return m + 1
    return m


@nb.njit(cache=True, nogil=True, inline="always")
def _add_pixel(label, cpar, st, p, x, y, neighbours, m, extra, roots, rootpos, nroots, ncomp):
    """Add pixel ``p`` joined to its ``m`` present ``neighbours``; returns ``(live roots, components)``.

    Pixels carry a component label; components have their own (small, cache-resident)
    union-find ``cpar`` and statistics ``st``.  ``extra`` is added to the root's EXTRA (window
    area for the foreground, the border flag for the background).
    """
    root = -1
    last = -1
    for i in range(m):
        lab = label[neighbours[i]]
        if lab == last:
            continue
        last = lab
        r = _find(cpar, lab)
        if root < 0:
            root = r
        elif r != root:
            root, nroots = _link(cpar, st, root, r, roots, rootpos, nroots)
    if root < 0:
        root = ncomp
        ncomp += 1
        cpar[root] = root
        st[root, X0] = x
        st[root, X1] = x
        st[root, Y0] = y
        st[root, Y1] = y
        st[root, SIZE] = 1
        st[root, FIRST] = p
        st[root, EXTRA] = extra
        roots[nroots] = root
        rootpos[root] = nroots
        nroots += 1
    else:
        st[root, X0] = min(st[root, X0], x)
        st[root, Y0] = min(st[root, Y0], y)
        st[root, X1] = max(st[root, X1], x)
        st[root, Y1] = max(st[root, Y1], y)
        st[root, SIZE] += 1
        st[root, FIRST] = min(st[root, FIRST], p)
        st[root, EXTRA] += extra
    label[p] = root
    return nroots, ncomp


@nb.njit(cache=True, nogil=True)
def image_cut_ious(q, gt, need, gain_table, v1, v2, amb):
    """Fill ``v1[c]``, ``v2[c]`` (best IoU over ``gt``) and ``amb[c]`` for every ``c`` with ``need[c]``.

    ``q`` is a 2-D uint8 map, ``gt`` ``[G, 4]`` int64 xyxy boxes, ``gain_table`` is
    :data:`WINDOW_GAIN`.  ``amb[c]`` marks a V1 cell the tree cannot decide (``v1[c]`` then
    holds a placeholder).
    """
    height, width = q.shape
    wp = width + 2
    n_pad = (height + 2) * wp
    order, xs, ys, starts = _sorted_pixels(q)
    n = height * width
    label = np.empty(n_pad, _INT)
    cpar = np.empty(n, _INT)
    st = np.empty((n, N_STATS), _INT)
    roots = np.empty(n, _INT)
    rootpos = np.empty(n, _INT)
    neighbours = np.empty(8, _INT)

    # Background sweep, 4-connectivity: holes of every needed cut-off, grouped by cut-off.
    cap = 64
    h_first = np.empty(cap, _INT)
    h_npix = np.empty(cap, np.int64)
    h_hi = np.empty(cap, np.int64)
    h_iou = np.empty(cap, np.float64)
    h_start = np.zeros(N_CUTS, np.int64)  # holes of cut-off c: h_start[c] <= h < h_stop[c]
    h_stop = np.zeros(N_CUTS, np.int64)
    n_holes = 0
    recorded = -1  # last cut-off whose holes were recorded
    label[:] = -1
    nroots = 0
    ncomp = 0
    for v in range(N_CUTS - 1):  # after value v the background is q <= v
        for k in range(starts[v], starts[v + 1]):
            p = order[k]
            x = xs[k]
            y = ys[k]
            m = _present(label, p - wp, neighbours, 0)
            m = _present(label, p - 1, neighbours, m)
            m = _present(label, p + 1, neighbours, m)
            m = _present(label, p + wp, neighbours, m)
            border = 1 if (x == 0 or y == 0 or x == width - 1 or y == height - 1) else 0
            nroots, ncomp = _add_pixel(label, cpar, st, p, x, y, neighbours, m, border, roots, rootpos, nroots,
                                       ncomp)
        if not need[v]:
            continue
        if recorded >= 0 and starts[recorded + 1] == starts[v + 1]:  # same background as then
            h_start[v] = h_start[recorded]
            h_stop[v] = h_stop[recorded]
            continue
        recorded = v
        h_start[v] = n_holes
        for i in range(nroots):
            r = roots[i]
            if st[r, EXTRA] != 0:  # reaches the border: not a hole
                continue
            if n_holes == h_first.size:
                h_first = _grow(h_first, n_holes)
                h_npix = _grow(h_npix, n_holes)
                h_hi = _grow(h_hi, n_holes)
                h_iou = _grow(h_iou, n_holes)
            h_first[n_holes] = st[r, FIRST]
            h_npix[n_holes] = st[r, SIZE]
            h_hi[n_holes] = (st[r, X1] - st[r, X0] + 2) * (st[r, Y1] - st[r, Y0] + 2)
            h_iou[n_holes] = best_iou(st[r, X0] - 1, st[r, Y0] - 1, min(st[r, X1] + 2, width - 1),
                                      min(st[r, Y1] + 2, height - 1), gt)
            n_holes += 1
        h_stop[v] = n_holes

    # Foreground sweep, 8-connectivity, from the top value down.
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    riou = np.empty(n, np.float64)
    label[:] = -1
    nroots = 0
    ncomp = 0
    empty_iou = best_iou(0, 0, 0, 0, gt)
    evaluated = -1  # last cut-off evaluated
    for v in range(N_CUTS - 1, 0, -1):  # after value v the foreground is q > v - 1
        for k in range(starts[v], starts[v + 1]):
            p = order[k]
            mask = ((label[p - wp - 1] >= 0) | (label[p - wp] >= 0) << 1 | (label[p - wp + 1] >= 0) << 2
                    | (label[p - 1] >= 0) << 3 | (label[p + 1] >= 0) << 4 | (label[p + wp - 1] >= 0) << 5
                    | (label[p + wp] >= 0) << 6 | (label[p + wp + 1] >= 0) << 7)
            m = 0
            if mask:
                m = _present(label, p - wp - 1, neighbours, m)
                m = _present(label, p - wp, neighbours, m)
                m = _present(label, p - wp + 1, neighbours, m)
                m = _present(label, p - 1, neighbours, m)
                m = _present(label, p + 1, neighbours, m)
                m = _present(label, p + wp - 1, neighbours, m)
                m = _present(label, p + wp, neighbours, m)
                m = _present(label, p + wp + 1, neighbours, m)
            nroots, ncomp = _add_pixel(label, cpar, st, p, xs[k], ys[k], neighbours, m, gain_table[mask], roots,
                                       rootpos, nroots, ncomp)
        c = v - 1
        if not need[c]:
            continue
        if evaluated >= 0 and starts[evaluated + 1] == starts[v]:  # same foreground as then
            v1[c] = v1[evaluated]
            v2[c] = v2[evaluated]
            amb[c] = amb[evaluated]
            continue
        evaluated = c
        if nroots == 0:
            v1[c] = empty_iou
            v2[c] = empty_iou
            amb[c] = False
            continue
        best2 = 0.0
        for i in range(nroots):
            r = roots[i]
            riou[r] = best_iou(st[r, X0], st[r, Y0], min(st[r, X1] + 1, width - 1),
                                min(st[r, Y1] + 1, height - 1), gt)
            lo[r] = st[r, EXTRA]
            hi[r] = st[r, EXTRA]
            best2 = max(best2, riou[r])
        for h in range(h_start[c], h_stop[c]):
            o = _find(cpar, label[h_first[h] - 1])  # left of the hole's first pixel: its enclosing component
            lo[o] += 2 * h_npix[h]
            hi[o] += 2 * h_hi[h]
            best2 = max(best2, h_iou[h])
        v2[c] = best2
        max_lo = 0
        for i in range(nroots):
            max_lo = max(max_lo, lo[roots[i]])
        chosen = -1.0
        ambiguous = False
        if h_start[c] == h_stop[c]:
            # No hole: areas are exact and every contour is top-level; findContours lists
            # those in reverse raster order of their first pixel, and max() keeps the first.
            latest = -1
            for i in range(nroots):
                r = roots[i]
                if lo[r] == max_lo and st[r, FIRST] > latest:
                    latest = st[r, FIRST]
                    chosen = riou[r]
        else:
            for i in range(nroots):
                r = roots[i]
                if hi[r] >= max_lo:
                    if chosen < 0:
                        chosen = riou[r]
                    elif riou[r] != chosen:
                        ambiguous = True
            for h in range(h_start[c], h_stop[c]):
                if 2 * h_hi[h] >= max_lo and h_iou[h] != chosen:
                    ambiguous = True
        v1[c] = chosen
        amb[c] = ambiguous


@nb.njit(cache=True, nogil=True)
def _grow(a, n):
    out = np.empty(max(2 * a.size, n + 1), a.dtype)
    out[: a.size] = a
    return out


@nb.njit(cache=True, nogil=True)
def batch_cut_ious(qs, gts, n_gt, need, v1, v2, amb):
    """:func:`image_cut_ious` for images ``qs[i]`` with GT ``gts[i, :n_gt[i]]``."""
    gain_table = WINDOW_GAIN
    for i in range(qs.shape[0]):
        image_cut_ious(qs[i], gts[i, : n_gt[i]], need[i], gain_table, v1[i], v2[i], amb[i])
