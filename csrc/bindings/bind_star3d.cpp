// Python bindings of the star-convex polyhedron ops: DLPack views in, GIL released around the kernels.
#include "bindings/binders.h"
#include "bindings/interop.h"
#include "ops/star3d/star3d.h"

namespace py = pybind11;

namespace ck {
namespace {

// The ray tables arrive as one tuple (verts, faces, finv, fdet, adj, dirmap), built once per Rays object.
RayViews ray_views(py::handle rays, Keepalive& keep) {
  py::tuple t = py::reinterpret_borrow<py::tuple>(rays);
  CK_CHECK_VALUE(t.size() == 6, "rays: expected the 6 ray tables");
  return RayViews{view(t[0], "rays.vertices", keep), view(t[1], "rays.faces", keep), view(t[2], "rays.finv", keep),
                  view(t[3], "rays.fdet", keep),     view(t[4], "rays.adj", keep),   view(t[5], "rays.dirmap", keep)};
}

}  // namespace

void bind_star3d(py::module_& m) {
  m.def(
      "star3d_polyhedron_to_label",
      [](py::handle rays, py::handle dist, py::handle points, py::handle labels, py::handle hull_vertex,
         py::handle out, const Ints& origin, int mode, bool use_overlap, int64_t overlap_label, py::handle rank,
         py::handle count, bool emu, uintptr_t stream) {
        Keepalive keep;
        RayViews rv = ray_views(rays, keep);
        TensorView dv = view(dist, "dist", keep), pv = view(points, "points", keep), lv = view(labels, "labels", keep),
                   hv = view(hull_vertex, "hull_vertex", keep), ov = view(out, "out", keep),
                   rk = view(rank, "rank", keep), cv = view(count, "count", keep);
        ensure_backend(dv, emu);
        py::gil_scoped_release nogil;
        polyhedron_to_label(rv, dv, pv, lv, hv, ov, origin, mode, use_overlap, overlap_label, rk, cv, emu,
                            reinterpret_cast<void*>(stream));
      },
      py::arg("rays"), py::arg("dist"), py::arg("points"), py::arg("labels"), py::arg("hull_vertex"), py::arg("out"),
      py::arg("origin"), py::arg("mode") = 0, py::arg("use_overlap") = false, py::arg("overlap_label") = 0, py::arg("rank") = py::none(),
      py::arg("count") = py::none(), py::arg("emu") = false, py::arg("stream") = 0,
      "Paint polyhedra (rows in paint order, first wins) into the zeroed int32 volume out, StarDist's rule; "
      "out[0, 0, 0] is voxel origin.");
  m.def(
      "star3d_nms",
      [](py::handle rays, py::handle dist, py::handle points, double thresh, int criterion, py::handle bucket_start,
         py::handle bucket_items, const Ints& nb, double bucket, const std::vector<double>& origin, double reach,
         py::handle state, py::handle geom, py::handle flags, bool emu, uintptr_t stream) {
        Keepalive keep;
        RayViews rv = ray_views(rays, keep);
        TensorView dv = view(dist, "dist", keep), pv = view(points, "points", keep),
                   bs = view(bucket_start, "bucket_start", keep), bi = view(bucket_items, "bucket_items", keep),
                   sv = view(state, "state", keep), gv = view(geom, "geom", keep), fv = view(flags, "flags", keep);
        ensure_backend(dv, emu);
        Nms3Stats s;
        {
          py::gil_scoped_release nogil;
          s = nms3d(rv, dv, pv, thresh, criterion, bs, bi, nb, bucket, origin, reach, sv, gv, fv, emu,
                    reinterpret_cast<void*>(stream));
        }
        py::dict d;
        d["kept"] = s.kept;
        d["pairs"] = s.pairs;
        d["box_rejected"] = s.box_rejected;
        d["bounded"] = s.bounded;
        d["voxels"] = s.voxels;
        d["early"] = s.early;
        d["table"] = s.table;
        d["ms_geometry"] = s.ms_geometry;
        d["ms_sweep"] = s.ms_sweep;
        return d;
      },
      py::arg("rays"), py::arg("dist"), py::arg("points"), py::arg("thresh"), py::arg("criterion"),
      py::arg("bucket_start"), py::arg("bucket_items"), py::arg("nb"), py::arg("bucket"), py::arg("origin"),
      py::arg("reach"), py::arg("state"), py::arg("geom") = py::none(), py::arg("flags") = py::none(),
      py::arg("emu") = false, py::arg("stream") = 0,
      "Greedy 3D NMS over candidates in rank order; state[i] = 1 kept, 2 suppressed. Returns the CPU sweep's stats.");
  m.def(
      "star3d_volumes",
      [](py::handle rays, py::handle dist, py::handle out) {
        Keepalive keep;
        RayViews rv = ray_views(rays, keep);
        TensorView dv = view(dist, "dist", keep), ov = view(out, "out", keep);
        py::gil_scoped_release nogil;
        polyhedron_volumes(rv, dv, ov);
      },
      py::arg("rays"), py::arg("dist"), py::arg("out"), "Analytic volumes (n,) float64 of polyhedra (n, n_rays).");
}

}  // namespace ck
