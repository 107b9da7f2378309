"""StarDist's 3D ray sets (unit directions + triangular faces on the sphere), same vertices, faces and json."""
from __future__ import annotations

import copy as _copy
import json
import numbers

import numpy as np

from ._checks import DIST_MAX_3D, MAX_RAYS, check_range

__all__ = ["Rays_Base", "Rays_Explicit", "Rays_Cartesian", "Rays_SubDivide", "Rays_Tetra", "Rays_Octo",
           "Rays_GoldenSpiral", "rays_from_json", "reorder_faces"]


def _positive_int(value, name, minimum, maximum=MAX_RAYS):
    """An int in [minimum, maximum] (the kernels take at most MAX_RAYS rays), checked before anything is built."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not minimum <= int(value) <= maximum:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    return int(value)


def _triple(value, name, positive=True):
    """A length-3 float64 vector (z, y, x), validated (finite; positive unless told otherwise)."""
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected 3 numbers (z, y, x), got {value!r}") from None
    if a.shape != (3,):
        raise ValueError(f"{name}: expected 3 numbers (z, y, x), got shape {a.shape}")
    if not np.all(np.isfinite(a)) or (positive and not np.all(a > 0)):
        raise ValueError(f"{name}: expected 3 finite{' positive' if positive else ''} numbers, got {value!r}")
    return a


def _as_dist(dist, n_rays, name="dist"):
    try:
        d = np.asarray(dist, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an array of real numbers") from None
    check_range(d, name, DIST_MAX_3D, what="distances")
    if d.ndim == 0 or d.shape[-1] != n_rays:
        raise ValueError(f"{name}: the last dimension should have length n_rays = {n_rays}, got shape {d.shape}")
    return d


def reorder_faces(verts, faces):
    """``faces`` (F, 3) with each triangle reversed where ``det(verts[face]) > 0``, StarDist's convention: a face
    (a, b, c) of a ray set has ``det(v_a, v_b, v_c) < 0`` in (z, y, x) order, i.e. it is counter-clockwise seen
    from outside in (x, y, z) order."""
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    flip = np.linalg.det(verts[faces]) > 0
    out = faces.copy()
    out[flip] = faces[flip, ::-1]
    return out


class Rays_Base:
    """A set of unit ray directions ``vertices`` (n_rays, 3) float64 in (z, y, x) and the triangles ``faces``
    (F, 3) int64 that connect them into a closed star-convex surface around the origin, StarDist's ``Rays_*``.

    Subclasses implement :meth:`setup_vertices_faces`; the constructor's keyword arguments are what
    :meth:`to_json` records, so that :func:`rays_from_json` can rebuild the set.

    Every ray set here has the same vertices (as float64, before StarDist's cast to float32: ``vertices.astype(
    np.float32)`` equals StarDist's ``vertices`` bit for bit), the same faces in the same order and orientation
    (``det(vertices[face]) < 0``, outward), and the same json as StarDist's class of the same name.
    """

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        verts, faces = self.setup_vertices_faces()
        verts = np.array(verts, np.float64)
        faces = np.array(faces)
        if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
            raise ValueError(f"vertices: expected (n_rays, 3) directions in (z, y, x), got shape {verts.shape}")
        if not np.all(np.isfinite(verts)):
            raise ValueError("vertices: must be finite")
        if faces.size == 0:
            faces = faces.reshape(0, 3).astype(np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces: expected (n_faces, 3) vertex indices, got shape {faces.shape}")
        integral = np.issubdtype(faces.dtype, np.integer) or (
            np.issubdtype(faces.dtype, np.floating) and np.all(faces == np.round(faces)))
        if not integral:
            raise TypeError(f"faces: expected integer vertex indices, got {faces.dtype}")
        faces = faces.astype(np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
            raise ValueError(f"faces: vertex indices must lie in [0, {len(verts)})")
        self._vertices, self._faces = verts, faces

    def setup_vertices_faces(self):
        """Return ``(vertices (n, 3) in (z, y, x), faces (F, 3) indices)``; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not define setup_vertices_faces()")

    @property
    def vertices(self) -> np.ndarray:
        """The (n_rays, 3) float64 ray directions (z, y, x), a copy."""
        return self._vertices.copy()

    @property
    def faces(self) -> np.ndarray:
        """The (n_faces, 3) int64 triangles of ray indices, oriented outward, a copy."""
        return self._faces.copy()

    def __getitem__(self, i):
        return self._vertices[i].copy()

    def __len__(self):
        return len(self._vertices)

    def __repr__(self):
        def _conv(x):
            if isinstance(x, (tuple, list, np.ndarray)):
                return "_".join(_conv(y) for y in x)
            return "%.2f" % x if isinstance(x, float) else str(x)
        args = "_".join(f"{k}_{_conv(v)}" for k, v in sorted(self.kwargs.items()))
        return f"{type(self).__name__}_{args}"

    def to_json(self) -> dict:
        """``{"name": class name, "kwargs": constructor arguments}``, StarDist's format (loads there and here)."""
        return {"name": type(self).__name__, "kwargs": _copy.deepcopy(self.kwargs)}

    def dist_loss_weights(self, anisotropy=(1, 1, 1)) -> np.ndarray:
        """Per-ray weights ``|vertices * anisotropy|`` (n_rays,) float64: a ray's length in physical units."""
        a = _triple(anisotropy, "anisotropy")
        return np.linalg.norm(self._vertices * a, axis=-1)

    def _face_det(self):
        # det is trilinear: det(d_a v_a, d_b v_b, d_c v_c) = d_a d_b d_c det(v_a, v_b, v_c), so one det per face
        # serves every dist
        return np.linalg.det(self._vertices[self._faces])

    def volume(self, dist=None):
        """Volume of the star-convex polyhedron with distances ``dist`` (..., n_rays) along the rays (None: all 1):
        ``-1/6 sum_faces det(d_a v_a, d_b v_b, d_c v_c)``, StarDist's signed-tetrahedra formula, in float64.
        Returns an array of shape ``dist.shape[:-1]`` (a float for 1D ``dist``)."""
        d = np.ones(len(self)) if dist is None else _as_dist(dist, len(self))
        prod = d[..., self._faces[:, 0]] * d[..., self._faces[:, 1]] * d[..., self._faces[:, 2]]
        return -(prod @ self._face_det()) / 6.0

    def surface(self, dist=None):
        """Surface area of the star-convex polyhedron with distances ``dist`` (..., n_rays) (None: all 1): the sum
        of its triangles' areas, float64, of shape ``dist.shape[:-1]``."""
        d = np.ones(len(self)) if dist is None else _as_dist(dist, len(self))
        pts = d[..., None] * self._vertices  # (..., n_rays, 3)
        a, b, c = (pts[..., self._faces[:, k], :] for k in range(3))
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1).sum(axis=-1)

    def copy(self, scale=(1, 1, 1)):
        """A copy whose vertices are multiplied by ``scale`` (z, y, x) (not renormalised, as StarDist's; its json
        is that of the unscaled set)."""
        s = _triple(scale, "scale", positive=False)
        res = _copy.deepcopy(self)
        res._vertices = res._vertices * s
        return res


def _registry():
    """Every Rays_Base subclass by name (cellkern's and any user subclass), what rays_from_json may build."""
    found, todo = {}, [Rays_Base]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found.setdefault(sub.__name__, sub)
            todo.append(sub)
    return found


def rays_from_json(d):
    """Rebuild a ray set from :meth:`Rays_Base.to_json`'s dict (StarDist's or cellkern's), or its JSON string."""
    if isinstance(d, (str, bytes)):
        d = json.loads(d)
    if not isinstance(d, dict) or "name" not in d:
        raise TypeError(f"d: expected a dict {{'name': ..., 'kwargs': {{...}}}}, got {type(d).__name__}")
    cls = _registry().get(d["name"])
    if cls is None or cls is Rays_SubDivide:
        raise ValueError(f"d: unknown ray set {d['name']!r} (known: {sorted(_registry())})")
    kwargs = d.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise TypeError(f"d['kwargs']: expected a dict, got {type(kwargs).__name__}")
    return cls(**kwargs)


class Rays_Explicit(Rays_Base):
    """Rays given as arrays: ``vertices0`` (n, 3) in (z, y, x) and ``faces0`` (F, 3), used as they are."""

    def __init__(self, vertices0, faces0):
        v = np.asarray(vertices0, np.float64)
        f = np.asarray(faces0)
        self.vertices0, self.faces0 = v, f
        # plain nested lists keep to_json JSON-serialisable (StarDist stores lists of numpy rows)
        super().__init__(vertices0=v.tolist(), faces0=f.tolist())

    def setup_vertices_faces(self):
        return self.vertices0, self.faces0


class Rays_Cartesian(Rays_Base):
    """Rays on a latitude/longitude grid: ``n_rays_z`` rings from pole to pole of ``n_rays_x`` rays each; the
    pole rings are pulled 1e-12 off the poles (so the rays stay distinct), two triangles per grid cell."""

    def __init__(self, n_rays_x=11, n_rays_z=5):
        nx, nz = _positive_int(n_rays_x, "n_rays_x", 3), _positive_int(n_rays_z, "n_rays_z", 3)
        if nx * nz > MAX_RAYS:
            raise ValueError(f"n_rays_x * n_rays_z: at most {MAX_RAYS} rays, got {nx} * {nz}")
        super().__init__(n_rays_x=nx, n_rays_z=nz)

    def setup_vertices_faces(self):
        nx, nz = self.kwargs["n_rays_x"], self.kwargs["n_rays_z"]
        # StarDist takes the angle steps in float32 and, off the pole rings, the trigonometry too (numpy scalar
        # promotion); the pole rings use float64 angles. Reproduced so the vertices agree bit for bit.
        dphi = np.float32(2.0 * np.pi / nx)
        dtheta = np.float32(np.pi / nz)
        verts = np.empty((nz, nx, 3), np.float64)
        for mz in range(nz):
            pole = mz == 0 or mz == nz - 1
            for mx in range(nx):
                phi = mx * dphi
                theta = (1e-12 if mz == 0 else np.pi - 1e-12) if pole else mz * dtheta
                st = np.sin(theta)
                dx, dy, dz = np.cos(phi) * st, np.sin(phi) * st, np.cos(theta)
                if pole:
                    dx, dy = dx + 1e-12, dy + 1e-12
                verts[mz, mx] = (dz, dy, dx)
        mz, mx = np.meshgrid(np.arange(nz - 1), np.arange(nx), indexing="ij")
        a, b = mz * nx + mx, mz * nx + (mx + 1) % nx          # (mz, mx), (mz, mx+1)
        c, e = (mz + 1) * nx + mx, (mz + 1) * nx + (mx + 1) % nx  # (mz+1, mx), (mz+1, mx+1)
        faces = np.stack([np.stack([a, e, b], -1), np.stack([a, c, e], -1)], axis=2)  # two per cell, in that order
        return verts.reshape(-1, 3), faces.reshape(-1, 3)


class Rays_SubDivide(Rays_Base):
    """Rays from a base polyhedron whose triangles are split ``n_level - 1`` times into four (edge midpoints
    pushed onto the unit sphere). Subclasses give :meth:`base_polyhedron`."""

    def __init__(self, n_level=4):
        super().__init__(n_level=_positive_int(n_level, "n_level", 1))

    def base_polyhedron(self):
        raise NotImplementedError(f"{type(self).__name__} is abstract: use Rays_Tetra or Rays_Octo")

    def setup_vertices_faces(self):
        verts, faces = self.base_polyhedron()
        n_v, n_f = len(verts), len(faces)
        for _ in range(self.kwargs["n_level"] - 1):  # each split adds a vertex per edge (3 F / 2 of them)
            n_v, n_f = n_v + 3 * n_f // 2, 4 * n_f
            if n_v > MAX_RAYS:
                raise ValueError(f"n_level: {type(self).__name__}({self.kwargs['n_level']}) would have more than "
                                 f"{MAX_RAYS} rays")
        for _ in range(self.kwargs["n_level"] - 1):
            verts, faces = self.split(verts, faces)
        return verts, faces

    @staticmethod
    def split(verts0, faces0):
        """One subdivision: every face (a, b, c) becomes (a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca);
        a new vertex per edge, appended in the order the edges are first met."""
        verts = [np.asarray(v, np.float64) for v in verts0]
        mid, faces = {}, []

        def midpoint(i, j):
            key = (min(i, j), max(i, j))
            if key not in mid:
                v = 0.5 * (verts[i] + verts[j])
                # multiply by the reciprocal norm (not divide): StarDist's rounding, to agree bit for bit
                verts.append(v * (1.0 / np.linalg.norm(v)))
                mid[key] = len(verts) - 1
            return mid[key]

        for a, b, c in faces0:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        return np.array(verts), faces


class Rays_Tetra(Rays_SubDivide):
    """Subdivided regular tetrahedron: n_level 1, 2, 3, 4 -> 4, 10, 34, 130 rays."""

    def base_polyhedron(self):
        verts = np.array([[np.sqrt(8.0 / 9), 0.0, -1.0 / 3],
                          [-np.sqrt(2.0 / 9), np.sqrt(2.0 / 3), -1.0 / 3],
                          [-np.sqrt(2.0 / 9), -np.sqrt(2.0 / 3), -1.0 / 3],
                          [0.0, 0.0, 1.0]])
        return verts, [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]


class Rays_Octo(Rays_SubDivide):
    """Subdivided regular octahedron (the six axis directions): n_level 1, 2, 3, 4 -> 6, 18, 66, 258 rays."""

    def base_polyhedron(self):
        verts = np.array([[0, 0, 1], [0, 1, 0], [0, 0, -1], [0, -1, 0], [1, 0, 0], [-1, 0, 0]], np.float64)
        faces = [[0, 1, 4], [0, 5, 1], [1, 2, 4], [1, 5, 2], [2, 3, 4], [2, 5, 3], [3, 0, 4], [3, 5, 0]]
        return verts, faces


class Rays_GoldenSpiral(Rays_Base):
    """``n`` rays on a golden spiral: ray i has ``z = linspace(-1, 1, n)[i]`` (rays 0 and n-1 are the -z and +z
    poles), ``rho = sqrt(1 - z^2)``, ``phi = i (3 - sqrt 5) pi`` and direction ``(z, rho sin phi, rho cos phi)``.

    ``anisotropy`` (z, y, x): the directions are divided by it, the faces are the convex hull of those divided
    directions (oriented outward), and only then are the directions renormalised, StarDist's construction: the
    polyhedra are regular in physical units on voxel-anisotropic data."""

    def __init__(self, n=70, anisotropy=None):
        n = _positive_int(n, "n", 4)
        if anisotropy is not None:
            anisotropy = tuple(float(a) for a in _triple(anisotropy, "anisotropy"))
        super().__init__(n=n, anisotropy=anisotropy)

    def setup_vertices_faces(self):
        from scipy.spatial import ConvexHull  # scipy: a cellkern dependency, imported where used

        n, aniso = self.kwargs["n"], self.kwargs["anisotropy"]
        phi = (3.0 - np.sqrt(5.0)) * np.pi * np.arange(n)
        z = np.linspace(-1, 1, n)
        rho = np.sqrt(1.0 - z ** 2)
        verts = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)]).T
        verts = verts / (np.ones(3) if aniso is None else np.array(aniso))
        faces = reorder_faces(verts, ConvexHull(verts).simplices)
        return verts / np.linalg.norm(verts, axis=-1, keepdims=True), faces
