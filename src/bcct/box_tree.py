"""All uint8 cut-offs of a quantised score map in one pass (numba kernels behind bcct.metrics).

For a cut-off ``c`` wsolevaluation runs ``cv2.findContours(q > c, RETR_TREE)``: one outer
contour per 8-connected foreground component and one hole contour per 4-connected
background component that does not reach the image border (OpenCV pads the image with
zeros).  The foreground sets ``q > c`` of successive cut-offs are nested, and so are the
background sets ``q <= c``, so the contours of every cut-off come from two sweeps:

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

Most pixels never need a union-find.  Two grayscale reconstructions (raster and
anti-raster scans plus a FIFO, Vincent 1993) split the map first:

* ``peak[p]``: the highest cut-off below which ``p`` is 8-connected to the first pixel of
  maximal value (the max-min path level; reconstruction by dilation from that pixel).  For
  every cut-off ``c`` the *main* component is exactly ``{peak > c}``, so its box comes from
  the row and column maxima of ``peak`` and its window area from a histogram of the
  second-smallest and the smallest ``peak`` of every 2x2 window; no union-find.  The other
  pixels (``peak < q``, side peaks: "domes") are the only ones the foreground sweep visits,
  and a dome is a separate component exactly for the cut-offs ``c >= peak`` of its pixels
  (all pixels of one dome share that level, and every already-swept neighbour of a dome
  pixel is a pixel of the same dome, so the 8-neighbour window bookkeeping is unchanged).
* ``fill[p]``: the lowest cut-off from which ``p`` is 4-connected to the image border
  through the background (the min-max path level; grayscale hole filling, reconstruction
  by erosion from the frame).  ``p`` lies in a hole exactly for ``q[p] <= c < fill[p]``,
  so the background sweep visits only those pixels ("basins"); a basin stops being a hole
  (it reaches the border) at its pixels' common ``fill``.

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
# component statistics, one row per component (array of structs: one cache line per row);
# LEVEL is a dome's peak level or a basin's fill level (equal for components that merge)
X0, Y0, X1, Y1, SIZE, FIRST, EXTRA, LEVEL = range(8)
N_STATS = 8
# quantise_maps status per map
QUANT_OK, QUANT_ZERO, QUANT_FALLBACK = 0, 1, 2


def _window_gain_table() -> np.ndarray:
    """``gain[mask]``: 2x2 windows around a new pixel holding >= 3 present pixels, for the
    8-bit mask of present neighbours (bits NW, N, NE, W, E, SW, S, SE)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    windows = ((0, 1, 3), (1, 2, 4), (3, 5, 6), (4, 6, 7))
    return sum((1 + bits[:, list(w)].sum(1) >= 3).astype(np.int32) for w in windows).astype(np.int32)


WINDOW_GAIN = _window_gain_table()


@nb.njit(cache=True, nogil=True)
def quantise_maps(cams, out, status):
    """``out[i] = (normalise(cams[i]) * 255).astype(uint8)`` for float64 maps ``[N, H, W]``,
    bit for bit wsolevaluation's ``normalize_scoremap`` then the uint8 cast: a map with a
    NaN or a single value becomes zeros (``status`` QUANT_ZERO); one with an infinity is
    left to the caller (QUANT_FALLBACK)."""
    height, width = cams.shape[1], cams.shape[2]
    for i in range(cams.shape[0]):
        cam = cams[i]
        lo = np.inf
        hi = -np.inf
        nan = False
        for y in range(height):
            for x in range(width):
                v = cam[y, x]
                if v != v:
                    nan = True
                lo = min(lo, v)
                hi = max(hi, v)
        if nan or lo == hi:
            out[i] = 0
            status[i] = QUANT_ZERO
            continue
        if np.isinf(lo) or np.isinf(hi):
            status[i] = QUANT_FALLBACK
            continue
        span = hi - lo  # == (cam - lo).max(): rounding is monotone
        for y in range(height):
            for x in range(width):
                out[i, y, x] = int((cam[y, x] - lo) / span * 255.0)
        status[i] = QUANT_OK


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
def reconstruct(qp, fp, hp, seed, height, width, dirty):
    """Both grayscale reconstructions of the framed map ``qp`` (zero frame), in place:

    * ``fp[p]``: min over 4-paths from ``p`` out of the image of the path's max value
      (reconstruction by erosion from the zero frame: grayscale hole filling);
    * ``hp[p]``: max over 8-paths from ``p`` to pixel ``seed`` of the path's min value
      (reconstruction by dilation from ``seed``).

    Raster and anti-raster scans (Vincent 1993) repeated until nothing changes; a row is
    rescanned only when it or the row it reads (above / below) changed since its last scan
    in that direction (a scan is idempotent).  A row scan is one vectorised pass over the
    row and the one it reads, then the propagation along the row, where the two
    reconstructions' dependency chains interleave.  ``dirty`` is scratch of ``height + 2``
    bytes.
    """
    wp = width + 2
    fp[:] = 0
    hp[:] = 0
    for y in range(1, height + 1):
        fp[y * wp + 1 : y * wp + width + 1] = 255
    hp[seed] = qp[seed]
    tf = np.zeros(wp, np.uint8)
    th = np.zeros(wp, np.uint8)
    dirty[:] = 1  # changed in the last scan (or never scanned): every row
    first = True
    step = 1
    while True:
        any_change = False
        prev_changed = 0  # the row read (above / below) changed in this scan
        prev_dirty = 0  # ... or in the last one
        for i in range(height):
            y = i + 1 if step > 0 else height - i
            was = dirty[y]
            if not (first or was or prev_dirty or prev_changed):
                prev_dirty = was
                prev_changed = 0
                dirty[y] = 0
                continue
            o = (y - step) * wp
            nb_f = fp[o : o + wp]
            nb_h = hp[o : o + wp]
            cur_f = fp[y * wp : (y + 1) * wp]
            cur_h = hp[y * wp : (y + 1) * wp]
            qr = qp[y * wp : (y + 1) * wp]
            for x in range(1, width + 1):
                tf[x] = min(cur_f[x], nb_f[x])
                th[x] = max(max(cur_h[x], nb_h[x]), max(nb_h[x - 1], nb_h[x + 1]))
            changed = 0
            vf = 0
            vh = 0
            first_x = 1 if step > 0 else width
            for j in range(width):
                x = first_x + step * j
                qv = qr[x]
                vf = max(min(tf[x], vf), qv)
                vh = min(max(th[x], vh), qv)
                changed |= (vf ^ cur_f[x]) | (vh ^ cur_h[x])
                cur_f[x] = vf
                cur_h[x] = vh
            prev_dirty = was
            prev_changed = 1 if changed else 0
            dirty[y] = prev_changed
            any_change |= changed != 0
        if step < 0:
            first = False
        if not (first or any_change):
            break
        step = -step


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
    return ra, _drop(roots, rootpos, rootpos[rb], nroots)


@nb.njit(cache=True, nogil=True, inline="always")
def _drop(roots, rootpos, pos, nroots):
    """Swap-remove the live root at ``roots[pos]``; returns the new live root count."""
    nroots -= 1
    last = roots[nroots]
    roots[pos] = last
    rootpos[last] = pos
    return nroots


@nb.njit(cache=True, nogil=True, inline="always")
def _present(label, nb_, neighbours, m):
    """Append ``nb_`` to ``neighbours`` when it is already in the sweep; returns the new count."""
    if label[nb_] >= 0:
        neighbours[m] = nb_
        return m + 1
    return m


@nb.njit(cache=True, nogil=True, inline="always")
def _add_pixel(label, cpar, st, p, x, y, neighbours, m, extra, level, roots, rootpos, nroots, ncomp):
    """Add pixel ``p`` joined to its ``m`` present ``neighbours``; returns ``(live roots, components)``.

    Pixels carry a component label; components have their own (small, cache-resident)
    union-find ``cpar`` and statistics ``st``.  ``extra`` is added to the root's EXTRA (the
    window area gain); ``level`` is stored in a new component's LEVEL.
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
        st[root, LEVEL] = level
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
def _sort_by_value(qp, items, m, order, starts):
    """``items[:m]`` (framed pixel indices) by value, stable: ``order[starts[v]:starts[v + 1]]``."""
    count = np.zeros(N_CUTS + 2, np.int64)
    for k in range(m):
        count[qp[items[k]] + 1] += 1
    for v in range(N_CUTS + 1):
        count[v + 1] += count[v]
    starts[:] = count
    for k in range(m):
        p = items[k]
        j = count[qp[p]]
        order[j] = p
        count[qp[p]] = j + 1


@nb.njit(cache=True, nogil=True)
def _buckets(qp, fp, hp, height, width, order_b, starts_b, order_d, starts_d, scratch_b, scratch_d):
    """Basin pixels (``fp > qp``) and dome pixels (``hp < qp``) by value, in raster order within
    a value: ``order_b[starts_b[v]:starts_b[v + 1]]`` and the same for domes.  Returns the
    two counts."""
    wp = width + 2
    n_b = 0
    n_d = 0
    for y in range(1, height + 1):
        qr = qp[y * wp : (y + 1) * wp]
        fr = fp[y * wp : (y + 1) * wp]
        hr = hp[y * wp : (y + 1) * wp]
        for x in range(1, width + 1):  # branch-free compaction
            v = qr[x]
            scratch_b[n_b] = y * wp + x
            n_b += fr[x] > v
            scratch_d[n_d] = y * wp + x
            n_d += hr[x] < v
    _sort_by_value(qp, scratch_b, n_b, order_b, starts_b)
    _sort_by_value(qp, scratch_d, n_d, order_d, starts_d)
    return n_b, n_d


@nb.njit(cache=True, nogil=True)
def _main_stats(hp, height, width, main_area, main_box):
    """``main_area[c]``: window area (doubled) of ``{hp > c}``; ``main_box[c]``: its x0, y0, x1, y1."""
    wp = width + 2
    hist = np.zeros((4, N_CUTS), np.int64)  # 4 interleaved histograms: no store-to-load chains
    colmax = np.zeros(wp, np.uint8)
    main_box[:, 0] = width
    main_box[:, 1] = height
    main_box[:, 2] = -1
    main_box[:, 3] = -1
    m4 = np.empty(wp, np.uint8)
    s2 = np.empty(wp, np.uint8)
    for y in range(height):
        cur = hp[(y + 1) * wp : (y + 2) * wp]
        nxt = hp[(y + 2) * wp : (y + 3) * wp]
        rmax = 0
        for x in range(1, width + 1):
            rmax = max(rmax, cur[x])
            colmax[x] = max(colmax[x], cur[x])
        main_box[rmax, 1] = min(main_box[rmax, 1], y)
        main_box[rmax, 3] = max(main_box[rmax, 3], y)
        if y + 1 < height:
            for x in range(1, width):
                lo1 = min(cur[x], cur[x + 1])
                hi1 = max(cur[x], cur[x + 1])
                lo2 = min(nxt[x], nxt[x + 1])
                hi2 = max(nxt[x], nxt[x + 1])
                m4[x] = min(lo1, lo2)
                s2[x] = min(max(lo1, lo2), min(hi1, hi2))
            for x in range(1, width):
                hist[x & 3, m4[x]] += 1
                hist[x & 3, s2[x]] += 1
    for x in range(width):
        v = colmax[x + 1]
        main_box[v, 0] = min(main_box[v, 0], x)
        main_box[v, 2] = max(main_box[v, 2], x)
    for v in range(N_CUTS):
        main_area[v] = hist[0, v] + hist[1, v] + hist[2, v] + hist[3, v]
    for v in range(N_CUTS - 2, -1, -1):  # main_box[c], main_area[c]: over peak levels > c
        main_area[v] += main_area[v + 1]
        main_box[v, 0] = min(main_box[v, 0], main_box[v + 1, 0])
        main_box[v, 1] = min(main_box[v, 1], main_box[v + 1, 1])
        main_box[v, 2] = max(main_box[v, 2], main_box[v + 1, 2])
        main_box[v, 3] = max(main_box[v, 3], main_box[v + 1, 3])
    for v in range(N_CUTS - 1):  # shift: level > c is index c + 1
        main_area[v] = main_area[v + 1]
        for j in range(4):
            main_box[v, j] = main_box[v + 1, j]


@nb.njit(cache=True, nogil=True)
def image_cut_ious(q, gt, need, gain_table, v1, v2, amb, qp, fp, hp, dirty, label, order_b, starts_b,
                   order_d, starts_d,
                   cpar, st, roots, rootpos, lo, hi, riou, main_area, main_box):
    """Fill ``v1[c]``, ``v2[c]`` (best IoU over ``gt``) and ``amb[c]`` for every ``c`` with ``need[c]``.

    ``q`` is a 2-D uint8 map, ``gt`` ``[G, 4]`` int64 xyxy boxes, ``gain_table`` is
    :data:`WINDOW_GAIN`.  ``amb[c]`` marks a V1 cell the tree cannot decide (``v1[c]`` then
    holds a placeholder).  The remaining arguments are scratch space sized for ``q``
    (:func:`batch_cut_ious` allocates them); ``label`` must come in as -1 and is left so.
    """
    height, width = q.shape
    wp = width + 2
    empty_iou = best_iou(0, 0, 0, 0, gt)
    # Framed copy of the map, value counts, the first pixel of maximal value.
    hist = np.zeros((4, N_CUTS), np.int64)  # 4 interleaved histograms: no store-to-load chains
    top = 0
    seed = -1
    for y in range(height):
        qr = q[y]
        dst = qp[(y + 1) * wp + 1 : (y + 2) * wp - 1]
        for x in range(width):
            v = qr[x]
            dst[x] = v
            hist[x & 3, v] += 1
            top = max(top, v)
    below = np.zeros(N_CUTS + 1, np.int64)  # below[v]: pixels of value < v
    for v in range(N_CUTS):
        below[v + 1] = below[v] + hist[0, v] + hist[1, v] + hist[2, v] + hist[3, v]
    for p in range(qp.size):
        if qp[p] == top:
            seed = p
            break
    for c in range(N_CUTS):
        if need[c] and c >= top:  # no foreground
            v1[c] = empty_iou
            v2[c] = empty_iou
            amb[c] = False
    if top <= 0:
        return
    neighbours = np.empty(8, _INT)

    # Background: holes of every needed cut-off, from the basin pixels only.
    reconstruct(qp, fp, hp, seed, height, width, dirty)
    # (roots and cpar are free until the sweeps: scratch for the bucketing)
    n_basin, n_dome = _buckets(qp, fp, hp, height, width, order_b, starts_b, order_d, starts_d, roots, cpar)
    cap = 64
    h_first = np.empty(cap, _INT)
    h_npix = np.empty(cap, np.int64)
    h_hi = np.empty(cap, np.int64)
    h_iou = np.empty(cap, np.float64)
    h_start = np.zeros(N_CUTS, np.int64)  # holes of cut-off c: h_start[c] <= h < h_stop[c]
    h_stop = np.zeros(N_CUTS, np.int64)
    n_holes = 0
    recorded = -1  # last cut-off whose holes were recorded
    nroots = 0
    ncomp = 0
    for v in range(top):  # after value v the background is q <= v; cut-offs >= top: no foreground
        for k in range(starts_b[v], starts_b[v + 1]):
            p = order_b[k]
            y = p // wp - 1
            x = p - (y + 1) * wp - 1
            m = _present(label, p - wp, neighbours, 0)
            m = _present(label, p - 1, neighbours, m)
            m = _present(label, p + 1, neighbours, m)
            m = _present(label, p + wp, neighbours, m)
            nroots, ncomp = _add_pixel(label, cpar, st, p, x, y, neighbours, m, 0, fp[p], roots, rootpos, nroots,
                                       ncomp)
        if not need[v]:
            continue
        if recorded >= 0 and below[recorded + 1] == below[v + 1]:  # same background as then
            h_start[v] = h_start[recorded]
            h_stop[v] = h_stop[recorded]
            continue
        recorded = v
        h_start[v] = n_holes
        i = 0
        while i < nroots:
            r = roots[i]
            if st[r, LEVEL] <= v:  # reached the border: no hole from now on, and never merged again
                nroots = _drop(roots, rootpos, i, nroots)
                continue
            i += 1
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
    for k in range(n_basin):
        label[order_b[k]] = -1

    # The main component {peak > c}: box from row / column maxima, window area from the
    # smallest and second-smallest peak level of every 2x2 window.
    _main_stats(hp, height, width, main_area, main_box)
    # Foreground: side peaks (domes) only, 8-connectivity, from the top value down.
    nroots = 0
    ncomp = 0
    evaluated = -1  # last cut-off evaluated
    for v in range(top, 0, -1):  # after value v the foreground is q > v - 1
        for k in range(starts_d[v], starts_d[v + 1]):
            p = order_d[k]
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
            y = p // wp - 1
            x = p - (y + 1) * wp - 1
            nroots, ncomp = _add_pixel(label, cpar, st, p, x, y, neighbours, m, gain_table[mask], hp[p], roots,
                                       rootpos, nroots, ncomp)
        c = v - 1
        if not need[c]:
            continue
        if evaluated >= 0 and below[v] == below[evaluated + 1]:  # same foreground as then
            v1[c] = v1[evaluated]
            v2[c] = v2[evaluated]
            amb[c] = amb[evaluated]
            continue
        evaluated = c
        # live domes: peak level <= c (the others are part of the main component now)
        best2 = 0.0
        i = 0
        while i < nroots:
            r = roots[i]
            if st[r, LEVEL] > c:
                nroots = _drop(roots, rootpos, i, nroots)
                continue
            i += 1
            riou[r] = best_iou(st[r, X0], st[r, Y0], min(st[r, X1] + 1, width - 1),
                               min(st[r, Y1] + 1, height - 1), gt)
            lo[r] = st[r, EXTRA]
            hi[r] = st[r, EXTRA]
            best2 = max(best2, riou[r])
        m_iou = best_iou(main_box[c, 0], main_box[c, 1], min(main_box[c, 2] + 1, width - 1),
                         min(main_box[c, 3] + 1, height - 1), gt)
        m_lo = main_area[c]
        m_hi = m_lo
        best2 = max(best2, m_iou)
        for h in range(h_start[c], h_stop[c]):
            left = h_first[h] - 1  # left of the hole's first pixel: its enclosing component
            if hp[left] > c:
                m_lo += 2 * h_npix[h]
                m_hi += 2 * h_hi[h]
            else:
                o = _find(cpar, label[left])
                lo[o] += 2 * h_npix[h]
                hi[o] += 2 * h_hi[h]
            best2 = max(best2, h_iou[h])
        v2[c] = best2
        max_lo = m_lo
        for i in range(nroots):
            max_lo = max(max_lo, lo[roots[i]])
        ambiguous = False
        if h_start[c] == h_stop[c]:
            # No hole: areas are exact and every contour is top-level; findContours lists
            # those in reverse raster order of their first pixel, and max() keeps the first.
            latest = -1
            chosen = -1.0
            ties = 0
            for i in range(nroots):
                r = roots[i]
                if lo[r] == max_lo:
                    ties += 1
                    if st[r, FIRST] > latest:
                        latest = st[r, FIRST]
                        chosen = riou[r]
            if m_lo == max_lo:
                if ties == 0 or _main_first(hp, main_box[c, 1], width, c) > latest:
                    chosen = m_iou
        else:
            chosen = m_iou if m_hi >= max_lo else -1.0
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
    for k in range(n_dome):
        label[order_d[k]] = -1


@nb.njit(cache=True, nogil=True, inline="always")
def _main_first(hp, y, width, c):
    """Framed index of the main component's first pixel (raster order) at cut-off ``c``:
    the first pixel of row ``y`` (its top row) with peak level above ``c``."""
    wp = width + 2
    row = (y + 1) * wp + 1
    for x in range(width):
        if hp[row + x] > c:
            return row + x
    return -1


@nb.njit(cache=True, nogil=True)
def _grow(a, n):
    out = np.empty(max(2 * a.size, n + 1), a.dtype)
    out[: a.size] = a
    return out


@nb.njit(cache=True, nogil=True)
def batch_cut_ious(qs, gts, n_gt, need, v1, v2, amb):
    """:func:`image_cut_ious` for images ``qs[i]`` with GT ``gts[i, :n_gt[i]]``."""
    height, width = qs.shape[1], qs.shape[2]
    n = height * width
    n_pad = (height + 2) * (width + 2)
    qp = np.zeros(n_pad, np.uint8)
    fp = np.empty(n_pad, np.uint8)
    hp = np.empty(n_pad, np.uint8)
    dirty = np.empty(height + 2, np.uint8)
    label = np.full(n_pad, -1, _INT)
    order_b = np.empty(n, _INT)
    starts_b = np.empty(N_CUTS + 2, np.int64)
    order_d = np.empty(n, _INT)
    starts_d = np.empty(N_CUTS + 2, np.int64)
    cpar = np.empty(n, _INT)
    st = np.empty((n, N_STATS), _INT)
    roots = np.empty(n, _INT)
    rootpos = np.empty(n, _INT)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    riou = np.empty(n, np.float64)
    main_area = np.empty(N_CUTS, np.int64)
    main_box = np.empty((N_CUTS, 4), np.int64)
    gain_table = WINDOW_GAIN
    for i in range(qs.shape[0]):
        image_cut_ious(qs[i], gts[i, : n_gt[i]], need[i], gain_table, v1[i], v2[i], amb[i], qp, fp, hp, dirty,
                       label, order_b, starts_b, order_d, starts_d, cpar, st, roots, rootpos, lo, hi, riou, main_area, main_box)
