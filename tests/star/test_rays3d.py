"""3D ray sets and geometry helpers against StarDist (a peer, where installed) and closed forms; bad input."""
import json
import math
import re

import numpy as np
import pytest

from cellkern.reference import rays_golden_spiral
from cellkern.star import geometry3d as g3
from cellkern.star import rays as cr
from cellkern.star import star_dist3d

CASES = ([("Rays_GoldenSpiral", dict(n=n)) for n in (4, 5, 32, 96)]
         + [("Rays_GoldenSpiral", dict(n=33, anisotropy=a)) for a in ((2, 1, 1), (1.0, 2.5, 0.7))]
         + [("Rays_Octo", dict(n_level=k)) for k in (1, 2, 3, 4)]
         + [("Rays_Tetra", dict(n_level=k)) for k in (1, 2, 3, 4)]
         + [("Rays_Cartesian", {}), ("Rays_Cartesian", dict(n_rays_x=6, n_rays_z=4)),
            ("Rays_Cartesian", dict(n_rays_x=17, n_rays_z=9))])
IDS = [f"{name}-{kw}" for name, kw in CASES]


def _sd_rays():
    return pytest.importorskip("stardist.rays3d", reason="stardist not installed")


def _cube_rays():
    """The 8 cube corners (z, y, x in {-1, 1}) / sqrt 3, triangulated by their hull, faces oriented outward."""
    from scipy.spatial import ConvexHull

    v = np.array([[z, y, x] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], np.float64) / math.sqrt(3)
    return cr.Rays_Explicit(v, cr.reorder_faces(v, ConvexHull(v).simplices))


# ---- the ray sets ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_rays_equal_stardist(name, kw):
    sd = _sd_rays()
    ours, theirs = getattr(cr, name)(**kw), getattr(sd, name)(**kw)
    v64, f = theirs.setup_vertices_faces()  # StarDist's float64 vertices, before its cast to float32
    assert ours.vertices.dtype == np.float64 and ours.faces.dtype == np.int64
    np.testing.assert_array_equal(ours.vertices, np.asarray(v64, np.float64))
    np.testing.assert_array_equal(ours.vertices.astype(np.float32), theirs.vertices)
    np.testing.assert_array_equal(ours.faces, theirs.faces)  # same faces, order and orientation
    assert ours.to_json() == theirs.to_json()
    assert len(ours) == len(theirs)


# not n=4: its rays 0 and 3 are antipodal poles, so two of its four faces are flat through the centre (det 0)
@pytest.mark.parametrize("name,kw", CASES[1:], ids=IDS[1:])
def test_rays_closed_outward_surface(name, kw):
    # independent of StarDist: unit rays, every face outward (det < 0 in z, y, x), an oriented closed surface of
    # genus 0 (each directed edge once, its reverse once; V - E + F = 2), inscribed in the unit sphere
    r = getattr(cr, name)(**kw)
    v, f = r.vertices, r.faces
    # Rays_Cartesian's directions are float32 off the poles (StarDist's arithmetic)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=0, atol=1e-7 if "Cartesian" in name else 1e-12)
    assert np.all(np.linalg.det(v[f]) < 0)
    directed = [(a, b) for tri in f.tolist() for a, b in zip(tri, tri[1:] + tri[:1])]
    assert len(set(directed)) == len(directed)
    unmatched = set(directed) - {(b, a) for a, b in directed}
    if "Cartesian" in name:
        # StarDist's latitude/longitude grid leaves its two pole rings (1e-12 off the poles) uncapped: a sphere
        # with two tiny holes, bounded by the ring edges (V - E + F = 0)
        nx, nz = kw.get("n_rays_x", 11), kw.get("n_rays_z", 5)
        rings = {(a, b) for a, b in unmatched if a // nx == b // nx and a // nx in (0, nz - 1)}
        assert unmatched == rings and len(unmatched) == 2 * nx
        assert len(v) - (len(directed) + len(unmatched)) // 2 + len(f) == 0
    else:
        assert not unmatched and len(v) - len(directed) // 2 + len(f) == 2
    assert 0 < r.volume() < 4 / 3 * math.pi


def test_golden_spiral_construction():
    # rays 0 and n-1 are the poles; with anisotropy the rays are the isotropic ones divided by it, renormalised,
    # and the faces are the outward hull of the divided (not renormalised) directions
    iso, an = cr.Rays_GoldenSpiral(40), cr.Rays_GoldenSpiral(40, anisotropy=(3, 1, 0.5))
    np.testing.assert_array_equal(iso.vertices[[0, -1]], [[-1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(an.vertices[[0, -1]], [[-1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(np.diff(iso.vertices[:, 0]), 2 / 39, rtol=1e-12)
    back = an.vertices * (3, 1, 0.5)
    np.testing.assert_allclose(back / np.linalg.norm(back, axis=1, keepdims=True), iso.vertices, atol=1e-14)
    np.testing.assert_array_equal(np.linalg.det((iso.vertices / (3, 1, 0.5))[an.faces]) < 0, True)
    # the shipped float32 helper and star_dist3d's default rays are the same rays
    for aniso in (None, (2, 1, 1)):
        np.testing.assert_array_equal(rays_golden_spiral(40, aniso),
                                      cr.Rays_GoldenSpiral(40, aniso).vertices.astype(np.float32))


def test_subdivision_counts():
    assert [len(cr.Rays_Octo(k)) for k in (1, 2, 3, 4)] == [6, 18, 66, 258]
    assert [len(cr.Rays_Tetra(k)) for k in (1, 2, 3, 4)] == [4, 10, 34, 130]
    assert [len(cr.Rays_Octo(k).faces) for k in (1, 2, 3)] == [8, 32, 128]
    np.testing.assert_array_equal(cr.Rays_Octo(3).vertices[:18], cr.Rays_Octo(2).vertices)  # new ones appended


def test_container_protocol_and_copy():
    r = cr.Rays_Octo(2)
    assert len(r) == 18 and r[4].tolist() == [1, 0, 0]
    np.testing.assert_array_equal(r[[0, 1]], r.vertices[:2])
    v = r.vertices
    v[0] = 7  # the properties hand out copies
    assert r.vertices[0].tolist() == [0, 0, 1]
    s = r.copy(scale=(2, 1, 0.5))
    np.testing.assert_array_equal(s.vertices, r.vertices * (2, 1, 0.5))
    np.testing.assert_array_equal(s.faces, r.faces)
    np.testing.assert_array_equal(r.dist_loss_weights((2, 1, 0.5)), np.linalg.norm(s.vertices, axis=1))


def test_copy_and_weights_equal_stardist():
    sd = _sd_rays()
    ours, theirs = cr.Rays_GoldenSpiral(24, (2, 1, 1)), sd.Rays_GoldenSpiral(24, (2, 1, 1))
    np.testing.assert_allclose(ours.copy((1.5, 1, 0.25)).vertices, theirs.copy((1.5, 1, 0.25)).vertices, rtol=1e-7)
    np.testing.assert_allclose(ours.dist_loss_weights((2, 1, 1)), theirs.dist_loss_weights((2, 1, 1)), rtol=1e-7)


# ---- json ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", CASES[::3] + [CASES[5]], ids=IDS[::3] + [IDS[5]])
def test_json_round_trip(name, kw):
    r = getattr(cr, name)(**kw)
    for d in (r.to_json(), json.loads(json.dumps(r.to_json())), json.dumps(r.to_json())):
        back = cr.rays_from_json(d)
        assert type(back) is type(r)
        np.testing.assert_array_equal(back.vertices, r.vertices)
        np.testing.assert_array_equal(back.faces, r.faces)


@pytest.mark.parametrize("name,kw", CASES[::3] + [CASES[5]], ids=IDS[::3] + [IDS[5]])
def test_json_with_stardist(name, kw):
    sd = _sd_rays()
    theirs = getattr(sd, name)(**kw)
    ours = cr.rays_from_json(json.loads(json.dumps(theirs.to_json())))
    np.testing.assert_array_equal(ours.vertices.astype(np.float32), theirs.vertices)
    np.testing.assert_array_equal(ours.faces, theirs.faces)
    back = sd.rays_from_json(json.loads(json.dumps(getattr(cr, name)(**kw).to_json())))
    np.testing.assert_array_equal(back.vertices, theirs.vertices)
    np.testing.assert_array_equal(back.faces, theirs.faces)


def test_explicit_json_both_ways():
    cube = _cube_rays()
    d = json.loads(json.dumps(cube.to_json()))  # cellkern's Explicit json is plain lists
    assert d["name"] == "Rays_Explicit"
    np.testing.assert_array_equal(cr.rays_from_json(d).vertices, cube.vertices)
    sd = _sd_rays()
    theirs = sd.rays_from_json(d)
    np.testing.assert_array_equal(theirs.vertices, cube.vertices.astype(np.float32))
    np.testing.assert_array_equal(theirs.faces, cube.faces)
    ours = cr.rays_from_json(theirs.to_json())  # StarDist's holds the float64 input, as lists of numpy rows
    np.testing.assert_array_equal(ours.vertices, cube.vertices)
    np.testing.assert_array_equal(ours.faces, cube.faces)


# ---- volume and surface --------------------------------------------------------------------------------------

def test_volume_surface_closed_forms():
    # Rays_Octo(1) with equal distances d: the octahedron |z|+|y|+|x| <= d, volume 4/3 d^3, 8 equilateral
    # triangles of side d sqrt 2; the cube of half-side a (rays to its corners, d = a sqrt 3): 8 a^3 and 24 a^2
    octo, cube = cr.Rays_Octo(1), _cube_rays()
    d = np.array([1.0, 2.5, 4.0])
    np.testing.assert_allclose(octo.volume(np.repeat(d[:, None], 6, 1)), 4 / 3 * d ** 3, rtol=1e-14)
    np.testing.assert_allclose(octo.surface(np.repeat(d[:, None], 6, 1)), 4 * math.sqrt(3) * d ** 2, rtol=1e-14)
    a = np.array([[0.5], [3.0]])
    np.testing.assert_allclose(cube.volume(np.tile(a * math.sqrt(3), (2, 1, 8))), 8 * a.T.repeat(2, 0) ** 3, rtol=1e-14)
    np.testing.assert_allclose(cube.surface(np.full(8, 2 * math.sqrt(3))), 24 * 4, rtol=1e-14)
    # the two pyramids of an octahedron stretched along +z: 2 d^2 (d1 + d) / 3
    dist = np.full(6, 2.0)
    dist[4] = 5.0
    assert octo.volume(dist) == pytest.approx(2 * 4 * 7 / 3, rel=1e-14)


def test_volume_surface_equal_stardist():
    sd = _sd_rays()
    rng = np.random.default_rng(1)
    for ours, theirs in ((cr.Rays_GoldenSpiral(32, (2, 1, 1)), sd.Rays_GoldenSpiral(32, (2, 1, 1))),
                         (cr.Rays_Octo(3), sd.Rays_Octo(3))):
        dist = rng.uniform(1, 8, (3, 4, len(ours)))
        vol, surf = ours.volume(dist), ours.surface(dist)
        assert vol.shape == surf.shape == (3, 4)
        np.testing.assert_allclose(vol, theirs.volume(dist), rtol=1e-6)  # StarDist's vertices are float32
        np.testing.assert_allclose(surf, theirs.surface(dist), rtol=1e-6)
        assert ours.volume(dist[0, 0]) == pytest.approx(vol[0, 0], rel=1e-14)


# ---- geometry3d ----------------------------------------------------------------------------------------------

def test_dist_to_coord3d():
    r = cr.Rays_Octo(1)
    dist = np.array([[1, 2, 3, 4, 5, 6.0]])
    c = g3.dist_to_coord3d(dist, [[10, 20, 30]], r)
    assert c.shape == (1, 6, 3) and c.dtype == np.float64
    np.testing.assert_array_equal(c[0, 4], [15, 20, 30])  # ray 4 is +z
    np.testing.assert_array_equal(c[0, 1], [10, 22, 30])  # ray 1 is +y
    assert g3.dist_to_coord3D is g3.dist_to_coord3d
    sd = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    rng = np.random.default_rng(2)
    dist, pts = rng.uniform(1, 5, (4, 32)), rng.uniform(0, 50, (4, 3))
    v = cr.Rays_GoldenSpiral(32).vertices
    np.testing.assert_array_equal(g3.dist_to_coord3d(dist, pts, v), sd.dist_to_coord3D(dist, pts, v))


def test_dist_to_volume_and_centroid_closed_forms():
    # octahedron stretched along +z to d1 (ray 4), d elsewhere: two square pyramids, centroid z = (d1 - d) / 4
    octo = cr.Rays_Octo(1)
    dist = np.full((2, 3, 1, 6), 2.0)
    dist[1, 2, 0, 4] = 6.0
    vol = g3.dist_to_volume(dist, octo)
    assert vol.shape == (2, 3, 1)
    np.testing.assert_allclose(vol[0, 0, 0], 4 / 3 * 8, rtol=1e-14)
    np.testing.assert_allclose(vol[1, 2, 0], 2 * 4 * 8 / 3, rtol=1e-14)
    rel = g3.dist_to_centroid(dist, octo, mode="relative")
    np.testing.assert_allclose(rel[0, 0, 0], 0, atol=1e-14)
    np.testing.assert_allclose(rel[1, 2, 0], [1.0, 0, 0], atol=1e-14)
    absolute = g3.dist_to_centroid(dist, octo)
    np.testing.assert_allclose(absolute[1, 2, 0], [2.0, 2, 0], atol=1e-14)
    np.testing.assert_allclose(absolute - rel, np.stack(np.indices((2, 3, 1)), -1), atol=1e-14)


def test_dist_to_volume_and_centroid_equal_stardist():
    lib = pytest.importorskip("stardist.lib.stardist3d", reason="stardist not installed")
    r = cr.Rays_GoldenSpiral(32, anisotropy=(2, 1, 1))
    dist = np.random.default_rng(3).uniform(2, 9, (3, 4, 5, 32)).astype(np.float32)
    v32, f32 = r.vertices.astype(np.float32), r.faces.astype(np.int32)
    np.testing.assert_allclose(g3.dist_to_volume(dist, r), lib.c_dist_to_volume(dist, v32, f32), rtol=1e-5)
    np.testing.assert_allclose(g3.dist_to_volume(dist, r), r.volume(dist), rtol=1e-13)
    for mode, flag in (("absolute", 1), ("relative", 0)):
        np.testing.assert_allclose(g3.dist_to_centroid(dist, r, mode),
                                   lib.c_dist_to_centroid(dist, v32, f32, np.int32(flag)), rtol=0, atol=1e-5)


def _parse_obj(text):
    objs = re.findall(r"^o (\S+)$", text, re.M)
    v = np.array([[float(t) for t in line.split()[1:]] for line in text.splitlines() if line.startswith("v ")])
    f = np.array([[int(t.split("/")[0]) for t in line.split()[1:]] for line in text.splitlines()
                  if line.startswith("f ")])
    vt = [line for line in text.splitlines() if line.startswith("vt ")]
    return objs, v, f, vt


@pytest.mark.parametrize("single_mesh", [True, False])
def test_obj_export_parses_back(tmp_path, single_mesh):
    r = cr.Rays_GoldenSpiral(20)
    rng = np.random.default_rng(4)
    polys = dict(dist=rng.uniform(2, 6, (3, 20)), points=rng.uniform(0, 40, (3, 3)), rays=r, prob=np.ones(3))
    fname = tmp_path / "cells.obj"
    text = g3.export_to_obj_file3d(polys, fname=str(fname), scale=(2, 0.5, 0.5), single_mesh=single_mesh,
                                   name="cell")
    assert fname.read_text() == text
    objs, v, f, vt = _parse_obj(text)
    assert objs == (["cell_0"] if single_mesh else ["cell_0", "cell_1", "cell_2"]) and vt == []
    assert v.shape == (60, 3) and f.shape == (3 * len(r.faces), 3)
    # x, y, z order, scaled, int(1 - log10(0.5)) = 1 decimal
    expect = (g3.dist_to_coord3d(polys["dist"], polys["points"], r) * (2, 0.5, 0.5))[..., ::-1].reshape(-1, 3)
    np.testing.assert_allclose(v, expect, rtol=0, atol=0.05 + 1e-9)
    np.testing.assert_array_equal(f, np.concatenate([r.faces + 1 + 20 * i for i in range(3)]))
    assert all(re.fullmatch(r"v -?\d+\.\d -?\d+\.\d -?\d+\.\d", line) for line in text.splitlines()
               if line.startswith("v "))
    # the rays may also come as their json, or as StarDist's rays_vertices / rays_faces
    alt = dict(polys, rays=r.to_json())
    assert g3.export_to_obj_file3D(alt, scale=(2, 0.5, 0.5), single_mesh=single_mesh, name="cell") == text
    alt = dict(dist=polys["dist"], points=polys["points"], rays_vertices=r.vertices, rays_faces=r.faces)
    assert g3.export_to_obj_file3d(alt, scale=(2, 0.5, 0.5), single_mesh=single_mesh, name="cell") == text


@pytest.mark.parametrize("scale,single_mesh", [(1, True), ((2, 0.5, 0.25), False)])
def test_obj_export_equals_stardist(scale, single_mesh):
    sd = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    r = cr.Rays_GoldenSpiral(24, anisotropy=(2, 1, 1))
    rng = np.random.default_rng(5)
    polys = dict(dist=rng.uniform(2, 6, (3, 24)), points=rng.uniform(0, 40, (3, 3)),
                 rays_vertices=r.vertices, rays_faces=r.faces)
    # with uv_map the text is StarDist's character for character
    ours = g3.export_to_obj_file3d(polys, scale=scale, single_mesh=single_mesh, uv_map=True)
    assert ours == sd.export_to_obj_file3D(polys, scale=scale, single_mesh=single_mesh, uv_map=True)
    assert len(_parse_obj(ours)[3]) == 3 * 24
    # without, only the face lines differ (plain indices instead of StarDist's dangling a/a texture references)
    plain = g3.export_to_obj_file3d(polys, scale=scale, single_mesh=single_mesh)
    theirs = sd.export_to_obj_file3D(polys, scale=scale, single_mesh=single_mesh)
    for a, b in zip(_parse_obj(plain), _parse_obj(theirs)):
        np.testing.assert_array_equal(a, b)


# ---- star_dist3d takes ray objects ---------------------------------------------------------------------------

def test_star_dist3d_accepts_rays_objects():
    lbl = np.zeros((12, 14, 13), np.int32)
    lbl[2:9, 3:11, 4:10] = 1
    lbl[9:12, 0:5, 0:4] = 2
    for r in (cr.Rays_GoldenSpiral(20, (2, 1, 1)), cr.Rays_Octo(2)):
        np.testing.assert_array_equal(star_dist3d(lbl, r), star_dist3d(lbl, r.vertices.astype(np.float32)))
    np.testing.assert_array_equal(star_dist3d(lbl, cr.Rays_GoldenSpiral(20)), star_dist3d(lbl, 20))


# ---- bad input -----------------------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(ValueError, match="n:"):
        cr.Rays_GoldenSpiral(3)
    with pytest.raises(TypeError, match="n:"):
        cr.Rays_GoldenSpiral(4.5)
    with pytest.raises(ValueError, match="anisotropy"):
        cr.Rays_GoldenSpiral(10, anisotropy=(1, 0, 1))
    with pytest.raises(ValueError, match="anisotropy"):
        cr.Rays_GoldenSpiral(10, anisotropy=(1, 1))
    with pytest.raises(ValueError, match="n_level"):
        cr.Rays_Octo(0)
    with pytest.raises(ValueError, match="n_rays_z"):
        cr.Rays_Cartesian(8, 2)
    with pytest.raises(NotImplementedError, match="abstract"):
        cr.Rays_SubDivide(2)
    with pytest.raises(ValueError, match="faces"):
        cr.Rays_Explicit(np.eye(3), [[0, 1, 3]])
    with pytest.raises(ValueError, match="vertices"):
        cr.Rays_Explicit(np.eye(4), [[0, 1, 2]])
    with pytest.raises(ValueError, match="unknown ray set"):
        cr.rays_from_json({"name": "Rays_Nope", "kwargs": {}})
    with pytest.raises(TypeError, match="d:"):
        cr.rays_from_json([1, 2])
    r = cr.Rays_Octo(1)
    with pytest.raises(ValueError, match="dist"):
        r.volume(np.ones(5))
    with pytest.raises(ValueError, match="scale"):
        r.copy((1, 2))
    with pytest.raises(ValueError, match="dist"):
        g3.dist_to_coord3d(np.ones((2, 5)), np.zeros((2, 3)), r.vertices)
    with pytest.raises(ValueError, match="points"):
        g3.dist_to_coord3d(np.ones((2, 6)), np.zeros((3, 3)), r.vertices)
    with pytest.raises(ValueError, match="mode"):
        g3.dist_to_centroid(np.ones((1, 1, 1, 6)), r, mode="center")
    with pytest.raises(ValueError, match="dist"):
        g3.dist_to_centroid(np.ones((1, 1, 6)), r)
    with pytest.raises(TypeError, match="rays"):
        g3.dist_to_volume(np.ones((1, 1, 1, 6)), r.vertices)
    with pytest.raises(ValueError, match="polys"):
        g3.export_to_obj_file3d(dict(dist=np.ones((1, 6)), points=np.zeros((1, 3))))
    with pytest.raises(ValueError, match="scale"):
        g3.export_to_obj_file3d(dict(dist=np.ones((1, 6)), points=np.zeros((1, 3)), rays=r), scale=(1, 0, 1))
