// Python bindings of the star-convex polygon ops: DLPack views in, GIL released around the kernels.
#include "bindings/binders.h"
#include "bindings/interop.h"
#include "ops/star/star.h"

namespace py = pybind11;

namespace ck {

void bind_star(py::module_& m) {
  m.def("star_pad", [] { return kStarPad; }, "Width of the zero frame of the padded label copy.");
  // the documented limits the Python API checks before calling in (one definition, in star.h)
  m.attr("star_dist_max") = kStarDistMax;
  m.attr("star_max_rays") = kMaxRays;
  m.def("star_padded_bytes", &star_padded_bytes, py::arg("shape"), py::arg("label_itemsize"),
        "Bytes of the padded-label workspace of star_dist.");
  m.def("star_table_steps", &star_table_steps, py::arg("shape"),
        "Length of the per-ray star_dist tables for a label image of this shape.");
  m.def(
      "star_dist_tables",
      [](py::handle steps, const Ints& shape, py::handle offs, py::handle pos, py::handle dist) {
        Keepalive keep;
        TensorView sv = view(steps, "steps", keep), ov = view(offs, "offs", keep), pv = view(pos, "pos", keep),
                   dv = view(dist, "dist", keep);
        py::gil_scoped_release nogil;
        star_dist_tables(sv, shape, ov, pv, dv);
      },
      py::arg("steps"), py::arg("shape"), py::arg("offs"), py::arg("pos"), py::arg("dist"),
      "Build the star_dist ray tables (host arrays) from float32 unit steps (n_rays, ndim).");
  m.def(
      "star_dist",
      [](py::handle labels, py::handle padded, py::handle offs, py::handle pos, py::handle dist, py::handle out,
         const Ints& grid, bool zero_background, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView lv = view(labels, "labels", keep), pv = view(padded, "padded", keep), ov = view(offs, "offs", keep),
                   qv = view(pos, "pos", keep), dv = view(dist, "dist", keep), outv = view(out, "out", keep);
        ensure_backend(lv, emu);
        py::gil_scoped_release nogil;
        star_dist(lv, pv, ov, qv, dv, outv, grid, zero_background, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("labels"), py::arg("padded"), py::arg("offs"), py::arg("pos"), py::arg("dist"), py::arg("out"),
      py::arg("grid"), py::arg("zero_background") = true, py::arg("emu") = false, py::arg("stream") = 0,
      "Star distances of a 2D/3D label image into out (..., n_rays), through the ray tables.");
  m.def(
      "star_dist_to_coord",
      [](py::handle dist, py::handle points, py::handle trig, double sy, double sx, py::handle coord, bool emu,
         uintptr_t stream) {
        Keepalive keep;
        TensorView dv = view(dist, "dist", keep), pv = view(points, "points", keep), tv = view(trig, "trig", keep),
                   cv = view(coord, "coord", keep);
        ensure_backend(dv, emu);
        py::gil_scoped_release nogil;
        dist_to_coord(dv, pv, tv, sy, sx, cv, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("dist"), py::arg("points"), py::arg("trig"), py::arg("scale_y"), py::arg("scale_x"), py::arg("coord"),
      py::arg("emu") = false, py::arg("stream") = 0, "Polygon vertices (n, 2, n_rays) float32, StarDist's rounding.");
  m.def(
      "star_polygons_to_label",
      [](py::handle dist, py::handle points, py::handle trig, py::handle order, double sy, double sx, py::handle coord,
         py::handle labels, int64_t origin_y, int64_t origin_x, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView dv = view(dist, "dist", keep), pv = view(points, "points", keep), tv = view(trig, "trig", keep),
                   ov = view(order, "order", keep), cv = view(coord, "coord", keep), lv = view(labels, "labels", keep);
        ensure_backend(dv, emu);
        py::gil_scoped_release nogil;
        polygons_to_label(dv, pv, tv, ov, sy, sx, cv, lv, origin_y, origin_x, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("dist"), py::arg("points"), py::arg("trig"), py::arg("order"), py::arg("scale_y"), py::arg("scale_x"),
      py::arg("coord"), py::arg("labels"), py::arg("origin_y") = 0, py::arg("origin_x") = 0, py::arg("emu") = false,
      py::arg("stream") = 0,
      "Paint polygons in `order` into the zeroed int32 labels (label i + 1 for polygon i); labels[0, 0] is image "
      "pixel (origin_y, origin_x).");
  m.def(
      "star_nms_candidates",
      [](py::handle prob, double thresh, int64_t y0, int64_t y1, int64_t x0, int64_t x1, py::handle cand) {
        Keepalive keep;
        TensorView pv = view(prob, "prob", keep), cv = view(cand, "cand", keep);
        py::gil_scoped_release nogil;
        return nms_candidates(pv, thresh, y0, y1, x0, x1, cv);
      },
      py::arg("prob"), py::arg("thresh"), py::arg("y0"), py::arg("y1"), py::arg("x0"), py::arg("x1"),
      py::arg("cand") = py::none(),
      "Count (cand=None) or gather the candidate cells with prob > thresh in [y0, y1) x [x0, x1), sorted by prob "
      "descending (stable), into the first elements of cand (room for the whole window); returns the count.");
  m.def(
      "star_nms",
      [](py::handle dist, py::handle cand, py::handle trig, const Ints& grid, double thresh, int criterion,
         py::handle state, py::handle cellmap, py::handle geom, py::handle flags, py::handle prob, const Ints& window,
         bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView dv = view(dist, "dist", keep), cv = view(cand, "cand", keep), tv = view(trig, "trig", keep),
                   sv = view(state, "state", keep), mv = view(cellmap, "cellmap", keep), gv = view(geom, "geom", keep),
                   fv = view(flags, "flags", keep), pv = view(prob, "prob", keep);
        ensure_backend(dv, emu);
        NmsStats s;
        {
          py::gil_scoped_release nogil;
          s = nms(dv, cv, tv, grid, thresh, criterion, sv, mv, gv, fv, pv, window, emu,
                  reinterpret_cast<void*>(stream));
        }
        py::dict d;
        d["pairs"] = s.pairs;
        d["bbox_rejected"] = s.bbox_rejected;
        d["bound_decided"] = s.bound_decided;
        d["disk_decided"] = s.disk_decided;
        d["sweep"] = s.sweep;
        d["sweep_early"] = s.sweep_early;
        d["fan"] = s.fan;
        d["maxima"] = s.maxima;
        d["helped"] = s.helped;
        d["ms_order"] = s.ms_order;
        d["ms_geometry"] = s.ms_geometry;
        d["ms_buckets"] = s.ms_buckets;
        d["ms_maxima"] = s.ms_maxima;
        d["ms_sweep"] = s.ms_sweep;
        return d;
      },
      py::arg("dist"), py::arg("cand"), py::arg("trig"), py::arg("grid"), py::arg("thresh"), py::arg("criterion"),
      py::arg("state"), py::arg("cellmap") = py::none(), py::arg("geom") = py::none(), py::arg("flags") = py::none(),
      py::arg("prob") = py::none(), py::arg("window") = Ints{}, py::arg("emu") = false, py::arg("stream") = 0,
      "Greedy polygon NMS over the sorted candidates; state[i] = 1 kept, 2 suppressed. Returns CPU statistics.");
  m.def(
      "star_label_range",
      [](py::handle y_true, py::handle y_pred) {
        Keepalive keep;
        TensorView tv = view(y_true, "y_true", keep), pv = view(y_pred, "y_pred", keep);
        LabelRange r;
        {
          py::gil_scoped_release nogil;
          r = label_range(tv, pv);
        }
        return py::make_tuple(r.min_true, r.max_true, r.min_pred, r.max_pred, r.both);
      },
      py::arg("y_true"), py::arg("y_pred"),
      "(min_true, max_true, min_pred, max_pred, pixels where both are > 0) of two label images.");
  m.def(
      "star_label_overlap",
      [](py::handle y_true, py::handle y_pred, py::handle lut_t, py::handle lut_p, py::handle size_t_,
         py::handle size_p, py::handle pair_t, py::handle pair_p, py::handle pair_n) {
        Keepalive keep;
        TensorView a = view(y_true, "y_true", keep), b = view(y_pred, "y_pred", keep), c = view(lut_t, "lut_true", keep),
                   d = view(lut_p, "lut_pred", keep), e = view(size_t_, "size_true", keep),
                   f = view(size_p, "size_pred", keep), g = view(pair_t, "pair_true", keep),
                   h = view(pair_p, "pair_pred", keep), i = view(pair_n, "pair_count", keep);
        std::vector<int64_t> r;
        {
          py::gil_scoped_release nogil;
          r = label_overlap(a, b, c, d, e, f, g, h, i);
        }
        return py::make_tuple(r[0], r[1], r[2]);
      },
      py::arg("y_true"), py::arg("y_pred"), py::arg("lut_true"), py::arg("lut_pred"), py::arg("size_true"),
      py::arg("size_pred"), py::arg("pair_true"), py::arg("pair_pred"), py::arg("pair_count"),
      "Compact label ids, object sizes and the overlap counts of all intersecting (true, pred) pairs.");
}

}  // namespace ck
