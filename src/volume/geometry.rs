//! Volume geometry, once for the whole package: the voxel -> world orientation of an affine
//! (nibabel's `io_orientation`), reorientation to axis codes (MONAI `Orientation`: the flips,
//! the permutation and the new affine), the output grid of a voxel spacing (MONAI `Spacing`,
//! `compute_shape_offset` with `scale_extent=False`) and the voxel transform that resamples one
//! image onto another's grid (MONAI `ResampleToMatch`). The fused pipeline (`pipeline.rs`) and
//! the Python transforms (`voxlm.transforms`, through `voxlm._core`) both call these.

use crate::error::{Error, Result};

/// A 4x4 affine (voxel index -> world mm), row major.
pub type M4 = [[f64; 4]; 4];

/// Output axis i -> (world axis, positive direction): `RAS` is `[(0, true), (1, true), (2, true)]`.
pub type Axcodes = [(usize, bool); 3];

/// RAS+ axis codes.
pub const RAS: Axcodes = [(0, true), (1, true), (2, true)];

/// MONAI's `AFFINE_TOL`: affines closer than this are the same grid (no resampling).
pub const AFFINE_TOL: f64 = 1e-3;

pub const IDENTITY: M4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

pub fn matmul(a: &M4, b: &M4) -> M4 {
    let mut o = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            o[i][j] = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// `m @ v` for a homogeneous 4-vector.
pub fn apply(m: &M4, v: &[f64; 4]) -> [f64; 4] {
    [0, 1, 2, 3].map(|i| (0..4).map(|k| m[i][k] * v[k]).sum())
}

/// Inverse of a 4x4 matrix by Gauss-Jordan elimination with partial pivoting.
pub fn inverse(m: &M4) -> Result<M4> {
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::config(format!(
            "affine: expected finite entries, got {m:?}"
        )));
    }
    let mut a = *m;
    let mut inv = IDENTITY;
    for c in 0..4 {
        let p = (c..4)
            .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
            .unwrap_or(c);
        if a[p][c].abs() < 1e-12 {
            return Err(Error::config(format!(
                "affine: expected an invertible matrix, got {m:?}"
            )));
        }
        a.swap(c, p);
        inv.swap(c, p);
        let d = a[c][c];
        for j in 0..4 {
            a[c][j] /= d;
            inv[c][j] /= d;
        }
        for r in 0..4 {
            if r != c {
                let f = a[r][c];
                for j in 0..4 {
                    a[r][j] -= f * a[c][j];
                    inv[r][j] -= f * inv[c][j];
                }
            }
        }
    }
    Ok(inv)
}

/// numpy's `allclose(a, b, rtol, atol)`: `|a - b| <= atol + rtol * |b|` everywhere.
pub fn allclose(a: &M4, b: &M4, rtol: f64, atol: f64) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= atol + rtol * y.abs())
}

/// Orientation codes of axis letters ("RAS", "LPS", "PL", ...: MONAI / nibabel letters):
/// letter i -> (world axis, positive direction).
pub fn axcodes_ornt(codes: &str) -> Result<Vec<(usize, bool)>> {
    let mut out = Vec::with_capacity(3);
    let mut seen = [false; 3];
    for c in codes.chars() {
        let (ax, pos) = match c {
            'R' => (0, true),
            'L' => (0, false),
            'A' => (1, true),
            'P' => (1, false),
            'S' => (2, true),
            'I' => (2, false),
            _ => {
                return Err(Error::config(format!(
                    "axcodes: unknown code {c:?} in {codes:?} (use L/R, P/A, I/S)"
                )))
            }
        };
        if seen[ax] {
            return Err(Error::config(format!(
                "axcodes: {codes:?} names an axis twice"
            )));
        }
        seen[ax] = true;
        out.push((ax, pos));
    }
    if out.is_empty() {
        return Err(Error::config("axcodes: expected 1 to 3 letters, got ''"));
    }
    Ok(out)
}

/// Parse three axis codes such as "RAS", "LPS", "PLI".
pub fn parse_axcodes(codes: &str) -> Result<Axcodes> {
    let v = axcodes_ornt(codes)?;
    if v.len() != 3 {
        return Err(Error::config(format!(
            "axcodes: expected 3 letters (e.g. 'RAS'), got {codes:?}"
        )));
    }
    Ok([v[0], v[1], v[2]])
}

/// Singular value decomposition of a `m x n` matrix (rows of `a`, `m >= n`) by one-sided
/// (Hestenes) Jacobi rotations: `(u [m x n] with unit columns where s > 0, s [n], v [n x n])`,
/// `a = u diag(s) v^T`. Accurate for the small (3x3) matrices of affines.
fn svd_tall(a: &[Vec<f64>], n: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
    let m = a.len();
    let mut u: Vec<Vec<f64>> = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for i in 0..n {
            for j in i + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for row in u.iter() {
                    alpha += row[i] * row[i];
                    beta += row[j] * row[j];
                    gamma += row[i] * row[j];
                }
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for row in u.iter_mut().chain(v.iter_mut()) {
                    let (x, y) = (row[i], row[j]);
                    row[i] = c * x - s * y;
                    row[j] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let s: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|r| u[r][j] * u[r][j]).sum::<f64>().sqrt())
        .collect();
    for row in u.iter_mut() {
        for (j, x) in row.iter_mut().enumerate() {
            if s[j] > 0.0 {
                *x /= s[j];
            }
        }
    }
    (u, s, v)
}

/// The nearest orthogonal matrix `u[:, keep] @ v[keep]` of a `q x p` matrix (nibabel keeps the
/// singular values above `tol`, default `s.max() * max(q, p) * eps`).
fn orthogonal_part(rs: &[Vec<f64>], q: usize, p: usize, tol: Option<f64>) -> Vec<Vec<f64>> {
    // SVD of the tall orientation of rs; for q < p decompose rs^T and transpose back
    let tall = q >= p;
    let (a, n) = if tall {
        (rs.to_vec(), p)
    } else {
        (
            (0..p).map(|j| (0..q).map(|i| rs[i][j]).collect()).collect(),
            q,
        )
    };
    let (u, s, v) = svd_tall(&a, n);
    let smax = s.iter().copied().fold(0.0, f64::max);
    let tol = tol.unwrap_or(smax * q.max(p) as f64 * f64::EPSILON);
    let rows = a.len();
    let mut r = vec![vec![0.0; n]; rows];
    for k in (0..n).filter(|&k| s[k] > tol) {
        for (i, ri) in r.iter_mut().enumerate() {
            for (j, rij) in ri.iter_mut().enumerate() {
                *rij += u[i][k] * v[j][k];
            }
        }
    }
    if tall {
        r
    } else {
        (0..q).map(|i| (0..p).map(|j| r[j][i]).collect()).collect()
    }
}

/// nibabel's `io_orientation` on the `q x p` rotation-zoom part `rzs` of an affine (rows: world
/// axes, columns: voxel axes): voxel axis j -> `Some((world axis, positive))`, or `None` for an
/// axis with no direction (a degenerate affine). Columns are normalised, replaced by the
/// nearest orthogonal matrix (SVD), and assigned most dominant component first.
pub fn io_orientation(rzs: &[Vec<f64>], tol: Option<f64>) -> Result<Vec<Option<(usize, bool)>>> {
    let q = rzs.len();
    let p = rzs.first().map_or(0, |r| r.len());
    if q == 0 || p == 0 || rzs.iter().any(|r| r.len() != p) {
        return Err(Error::shape(format!(
            "affine: expected a rectangular matrix of at least 2x2, got rows of lengths {:?}",
            rzs.iter().map(|r| r.len()).collect::<Vec<_>>()
        )));
    }
    if rzs.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::config("affine: expected finite entries"));
    }
    let mut rs = rzs.to_vec();
    for j in 0..p {
        let n = (0..q).map(|i| rs[i][j] * rs[i][j]).sum::<f64>().sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        for row in rs.iter_mut() {
            row[j] /= n;
        }
    }
    let mut r = orthogonal_part(&rs, q, p, tol);
    // np.argsort(np.min(-(r**2), axis=0), kind="stable")
    let key: Vec<f64> = (0..p)
        .map(|j| {
            (0..q)
                .map(|i| -(r[i][j] * r[i][j]))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| key[a].total_cmp(&key[b]));
    let mut out = vec![None; p];
    for j in order {
        if (0..q).all(|i| r[i][j].abs() <= 1e-8) {
            continue;
        }
        let mut best = 0;
        for i in 1..q {
            if r[i][j].abs() > r[best][j].abs() {
                best = i;
            }
        }
        out[j] = Some((best, r[best][j] >= 0.0));
        r[best].iter_mut().for_each(|x| *x = 0.0);
    }
    Ok(out)
}

/// The orientation of a 4x4 affine's first `n` voxel axes (nibabel: `io_orientation` of the
/// top-left `(n+1) x (n+1)` block).
pub fn orientation(affine: &M4, n: usize) -> Result<Vec<Option<(usize, bool)>>> {
    let n = n.clamp(1, 3);
    let rzs: Vec<Vec<f64>> = (0..n).map(|i| affine[i][..n].to_vec()).collect();
    io_orientation(&rzs, None)
}

/// A reorientation (MONAI `Orientation`): for input axis j, `ornt[j] = (output axis, flip)`;
/// `perm[i]` is the input axis that becomes output axis i; `affine` is the new affine.
#[derive(Clone, Debug, PartialEq)]
pub struct Reorient {
    pub ornt: Vec<(usize, bool)>,
    pub perm: Vec<usize>,
    pub affine: M4,
}

impl Reorient {
    /// True when the reorientation keeps the array as it is.
    pub fn is_identity(&self) -> bool {
        self.ornt
            .iter()
            .enumerate()
            .all(|(j, &(o, flip))| o == j && !flip)
    }
}

/// The reorientation of an image of spatial `shape` (1 to 3 dims) with `affine` to axis codes
/// `target` (one per spatial dim): nibabel's `ornt_transform` of the image's `io_orientation`
/// to the codes, and `affine @ inv_ornt_aff(ornt, shape)` (the affine of the flipped, permuted
/// array, as MONAI's `Orientation` computes it).
pub fn reorient(affine: &M4, shape: &[usize], target: &[(usize, bool)]) -> Result<Reorient> {
    let n = shape.len();
    if !(1..=3).contains(&n) || target.len() != n {
        return Err(Error::shape(format!(
            "Orientation: expected 1 to 3 spatial dims and one axis code per dim, got shape \
             {shape:?} and {} codes",
            target.len()
        )));
    }
    let start = orientation(affine, n)?;
    let mut ornt = vec![(0usize, false); n];
    for (end_in, &(end_out, end_pos)) in target.iter().enumerate() {
        let hit = start
            .iter()
            .position(|s| matches!(s, Some((w, _)) if *w == end_out));
        match hit {
            Some(start_in) => {
                let start_pos = matches!(start[start_in], Some((_, true)));
                ornt[start_in] = (end_in, start_pos != end_pos);
            }
            None => {
                return Err(Error::config(format!(
                    "Orientation: the affine has no voxel axis along world axis {end_out} \
                     (image orientation {start:?}, a degenerate affine?)"
                )))
            }
        }
    }
    let mut perm = vec![0usize; n];
    for (j, &(o, _)) in ornt.iter().enumerate() {
        perm[o] = j;
    }
    // inv_ornt_aff: undo_flip @ undo_reorder, embedded in 4x4 (spatial block [:n, :n], [:n, 3])
    let mut undo_reorder = IDENTITY;
    for (i, &(o, _)) in ornt.iter().enumerate() {
        undo_reorder[i] = [0.0; 4];
        undo_reorder[i][o] = 1.0;
    }
    let mut undo_flip = IDENTITY;
    for (i, &(_, flip)) in ornt.iter().enumerate() {
        let f = if flip { -1.0 } else { 1.0 };
        let center = -(shape[i] as f64 - 1.0) / 2.0;
        undo_flip[i][i] = f;
        undo_flip[i][3] = f * center - center;
    }
    let inv = matmul(&undo_flip, &undo_reorder);
    Ok(Reorient {
        ornt,
        perm,
        affine: matmul(affine, &inv),
    })
}

/// The output grid of MONAI's `Spacing` (`scale_extent=False`).
#[derive(Clone, Debug, PartialEq)]
pub struct SpacingGrid {
    /// The new affine: the input's axis directions with voxel size `pixdim`.
    pub affine: M4,
    pub shape: [usize; 3],
    /// Output voxel index -> input voxel index.
    pub xform: M4,
    /// MONAI resamples nothing: the grids agree within `AFFINE_TOL` and the shapes are equal.
    pub identity: bool,
}

/// MONAI `Spacing` geometry (`compute_shape_offset`, `scale_extent=False`) for an image of
/// `shape` with `affine`, resampled to voxel size `pixdim` mm.
pub fn spacing_grid(shape: [usize; 3], affine: &M4, pixdim: [f64; 3]) -> Result<SpacingGrid> {
    if pixdim.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(Error::config(format!(
            "pixdim: expected 3 positive voxel sizes, got {pixdim:?}"
        )));
    }
    if shape.contains(&0) {
        return Err(Error::shape(format!(
            "Spacing: expected a non-empty spatial shape, got {shape:?}"
        )));
    }
    let mut new = IDENTITY;
    for j in 0..3 {
        let n = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        for i in 0..3 {
            new[i][j] = affine[i][j] / n * pixdim[j];
        }
    }
    let to_out = matmul(&inverse(&new)?, affine);
    let mut corners = Vec::with_capacity(8);
    for a in [0.0, shape[0] as f64 - 1.0] {
        for b in [0.0, shape[1] as f64 - 1.0] {
            for c in [0.0, shape[2] as f64 - 1.0] {
                corners.push([a, b, c, 1.0]);
            }
        }
    }
    let outs: Vec<[f64; 4]> = corners.iter().map(|c| apply(&to_out, c)).collect();
    let mut out_shape = [0usize; 3];
    for i in 0..3 {
        let (lo, hi) = outs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), o| {
                (l.min(o[i] / o[3]), h.max(o[i] / o[3]))
            });
        let extent = ((hi - lo) + 1.0).round_ties_even();
        if !(extent.is_finite() && extent < 1e9) {
            return Err(Error::shape(format!(
                "Spacing: the output grid for pixdim {pixdim:?} is too large ({extent} voxels)"
            )));
        }
        out_shape[i] = extent.max(1.0) as usize;
    }
    super::check_alloc(&format!("Spacing to pixdim {pixdim:?}"), &out_shape)?;
    // the corner nearest the origin in output voxel space becomes the new origin (MONAI:
    // np.allclose(min over corners of (dist - dist_i), 0) with atol 1e-8)
    let offset = outs
        .iter()
        .position(|o| {
            (0..3).all(|i| {
                let m = outs
                    .iter()
                    .map(|p| p[i] - o[i])
                    .fold(f64::INFINITY, f64::min);
                m.abs() <= 1e-8
            })
        })
        .map(|ci| {
            let w = apply(affine, &corners[ci]);
            [w[0], w[1], w[2]]
        })
        .unwrap_or_else(|| {
            // otherwise the output centre is aligned with the input centre
            let mut o = [0.0; 3];
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = (0..3)
                    .map(|k| affine[i][k] * shape[k] as f64 / 2.0)
                    .sum::<f64>()
                    + affine[i][3]
                    - (0..3)
                        .map(|k| new[i][k] * out_shape[k] as f64 / 2.0)
                        .sum::<f64>();
            }
            o
        });
    for i in 0..3 {
        new[i][3] = offset[i];
    }
    let xform = matmul(&inverse(affine)?, &new);
    let identity = out_shape == shape && is_same_grid(affine, &new, &xform);
    Ok(SpacingGrid {
        affine: new,
        shape: out_shape,
        xform,
        identity,
    })
}

/// MONAI `SpatialResample`'s "nothing to do" test on the affines (the shapes are checked by the
/// caller): `allclose(src, dst, atol=AFFINE_TOL)` or `allclose(xform, I, atol=AFFINE_TOL)`.
fn is_same_grid(src: &M4, dst: &M4, xform: &M4) -> bool {
    allclose(src, dst, 1e-5, AFFINE_TOL) || allclose(xform, &IDENTITY, 1e-5, AFFINE_TOL)
}

/// MONAI `ResampleToMatch`: the voxel transform from the destination grid (`dst_shape`,
/// `dst_affine`) into the source image (`inverse(src_affine) @ dst_affine`) and whether the
/// grids agree (nothing to resample).
pub fn match_grid(
    src_shape: [usize; 3],
    src_affine: &M4,
    dst_shape: [usize; 3],
    dst_affine: &M4,
) -> Result<(M4, bool)> {
    let xform = matmul(&inverse(src_affine)?, dst_affine);
    let identity = src_shape == dst_shape && is_same_grid(src_affine, dst_affine, &xform);
    Ok((xform, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(d: [f64; 3], t: [f64; 3]) -> M4 {
        let mut a = IDENTITY;
        for i in 0..3 {
            a[i][i] = d[i];
            a[i][3] = t[i];
        }
        a
    }

    fn close(a: &M4, b: &M4) -> bool {
        allclose(a, b, 0.0, 1e-9)
    }

    #[test]
    fn axcodes_parse_and_refuse() {
        assert_eq!(parse_axcodes("RAS").ok(), Some(RAS));
        assert_eq!(
            parse_axcodes("PLI").ok(),
            Some([(1, false), (0, false), (2, false)])
        );
        assert!(matches!(parse_axcodes("RAX"), Err(Error::Config(_))));
        assert!(matches!(parse_axcodes("RRS"), Err(Error::Config(_))));
        assert!(matches!(parse_axcodes("RA"), Err(Error::Config(_))));
        assert!(matches!(axcodes_ornt(""), Err(Error::Config(_))));
        assert_eq!(axcodes_ornt("PL").ok(), Some(vec![(1, false), (0, false)]));
    }

    #[test]
    fn inverse_and_singular() -> Result<()> {
        let a = diag([2.0, -3.0, 0.5], [1.0, 2.0, 3.0]);
        assert!(close(&matmul(&a, &inverse(&a)?), &IDENTITY));
        let s = diag([1.0, 0.0, 1.0], [0.0; 3]);
        assert!(matches!(inverse(&s), Err(Error::Config(_))));
        Ok(())
    }

    #[test]
    fn orientation_of_axis_aligned_and_permuted_affines() -> Result<()> {
        // LPS with zooms: x -> -R, y -> -A, z -> +S
        let lps = diag([-0.7, -0.7, 2.5], [0.0; 3]);
        assert_eq!(
            orientation(&lps, 3)?,
            vec![Some((0, false)), Some((1, false)), Some((2, true))]
        );
        // voxel axes permuted: x -> S, y -> R, z -> -A
        let mut p = [[0.0; 4]; 4];
        p[2][0] = 1.0;
        p[0][1] = 2.0;
        p[1][2] = -3.0;
        p[3][3] = 1.0;
        assert_eq!(
            orientation(&p, 3)?,
            vec![Some((2, true)), Some((0, true)), Some((1, false))]
        );
        // a zero column has no direction
        let z = diag([1.0, 1.0, 0.0], [0.0; 3]);
        assert_eq!(orientation(&z, 3)?[2], None);
        Ok(())
    }

    #[test]
    fn oblique_orientation_uses_the_nearest_rotation() -> Result<()> {
        // 30 degrees about z (still nearest R/A), then a shear that keeps the dominant axes
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let rzs = vec![vec![c, -s, 0.0], vec![s, c, 0.0], vec![0.0, 0.0, 1.0]];
        assert_eq!(
            io_orientation(&rzs, None)?,
            vec![Some((0, true)), Some((1, true)), Some((2, true))]
        );
        // 60 degrees: voxel x points mostly along A, y mostly along -R
        let (c, s) = (60f64.to_radians().cos(), 60f64.to_radians().sin());
        let rzs = vec![vec![c, -s, 0.0], vec![s, c, 0.0], vec![0.0, 0.0, 1.0]];
        assert_eq!(
            io_orientation(&rzs, None)?,
            vec![Some((1, true)), Some((0, false)), Some((2, true))]
        );
        assert!(io_orientation(&[vec![1.0, 0.0], vec![0.0]], None).is_err());
        assert!(io_orientation(&[vec![f64::NAN]], None).is_err());
        Ok(())
    }

    #[test]
    fn svd_reconstructs() {
        let a = vec![
            vec![1.0, 2.0, 0.5],
            vec![-0.3, 0.2, 4.0],
            vec![2.0, -1.0, 1.0],
        ];
        let (u, s, v) = svd_tall(&a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let x: f64 = (0..3).map(|k| u[i][k] * s[k] * v[j][k]).sum();
                assert!((x - a[i][j]).abs() < 1e-12, "{i} {j}: {x} vs {}", a[i][j]);
            }
        }
    }

    #[test]
    fn reorient_maps_the_same_world_points() -> Result<()> {
        let a = {
            let mut m = [[0.0; 4]; 4];
            m[0][1] = -1.5; // voxel y -> -R
            m[1][2] = 2.0; // voxel z -> +A
            m[2][0] = -0.5; // voxel x -> -S
            m[0][3] = 10.0;
            m[1][3] = -4.0;
            m[2][3] = 7.0;
            m[3][3] = 1.0;
            m
        };
        let shape = [5usize, 6, 7];
        let r = reorient(&a, &shape, &RAS)?;
        // output axis i is input axis perm[i]; flipped input axes count from the far end
        assert_eq!(r.perm, vec![1, 2, 0]);
        assert_eq!(r.ornt, vec![(2, true), (0, true), (1, false)]);
        let out_shape = [6usize, 7, 5];
        for idx in [[0usize, 0, 0], [5, 6, 4], [2, 3, 1]] {
            let mut src = [0.0f64; 3];
            for (i, &j) in r.perm.iter().enumerate() {
                let flip = r.ornt[j].1;
                src[j] = if flip {
                    (shape[j] - 1 - idx[i]) as f64
                } else {
                    idx[i] as f64
                };
            }
            let w0 = apply(&a, &[src[0], src[1], src[2], 1.0]);
            let w1 = apply(
                &r.affine,
                &[idx[0] as f64, idx[1] as f64, idx[2] as f64, 1.0],
            );
            assert!(
                (0..3).all(|k| (w0[k] - w1[k]).abs() < 1e-12),
                "{w0:?} {w1:?}"
            );
            assert!(idx.iter().zip(out_shape).all(|(&i, n)| i < n));
        }
        assert!(reorient(&IDENTITY, &shape, &RAS)?.is_identity());
        assert!(reorient(&a, &shape, &RAS[..2]).is_err());
        let degenerate = diag([1.0, 1.0, 0.0], [0.0; 3]);
        assert!(matches!(
            reorient(&degenerate, &shape, &RAS),
            Err(Error::Config(_))
        ));
        Ok(())
    }

    #[test]
    fn spacing_grid_halves_and_keeps_the_origin_corner() -> Result<()> {
        let a = diag([1.0, 1.0, 2.0], [3.0, 4.0, 5.0]);
        let g = spacing_grid([10, 10, 5], &a, [2.0, 2.0, 2.0])?;
        // (n - 1) * old / new + 1 voxels, rounded half to even: 9/2 + 1 = 5.5 -> 6; 4 + 1 = 5
        assert_eq!(g.shape, [6, 6, 5]);
        assert!(close(&g.affine, &diag([2.0, 2.0, 2.0], [3.0, 4.0, 5.0])));
        assert!(close(&g.xform, &diag([2.0, 2.0, 1.0], [0.0; 3])));
        assert!(!g.identity);
        // a flipped axis: the origin moves to the corner nearest the output origin
        let f = diag([-1.0, 1.0, 1.0], [0.0; 3]);
        let g = spacing_grid([4, 4, 4], &f, [1.0, 1.0, 1.0])?;
        assert!(g.identity);
        assert_eq!(g.shape, [4, 4, 4]);
        let g = spacing_grid([5, 4, 4], &f, [2.0, 1.0, 1.0])?;
        assert_eq!(g.shape, [3, 4, 4]);
        assert!((g.affine[0][0] + 2.0).abs() < 1e-12 && g.affine[0][3].abs() < 1e-12);
        assert!(spacing_grid([4, 4, 4], &a, [0.0, 1.0, 1.0]).is_err());
        assert!(spacing_grid([0, 4, 4], &a, [1.0, 1.0, 1.0]).is_err());
        assert!(spacing_grid([4, 4, 4], &a, [1e-12, 1.0, 1.0]).is_err());
        Ok(())
    }

    #[test]
    fn match_grid_is_inverse_src_at_dst() -> Result<()> {
        let dst = diag([0.5, 0.5, 3.0], [1.0, 2.0, 3.0]);
        let src = diag([2.0, 2.0, 3.0], [0.0, 0.0, 3.0]);
        let (x, same) = match_grid([8, 8, 4], &src, [32, 32, 4], &dst)?;
        assert!(!same);
        assert!(close(&x, &diag([0.25, 0.25, 1.0], [0.5, 1.0, 0.0])));
        let (_, same) = match_grid([8, 8, 4], &dst, [8, 8, 4], &dst)?;
        assert!(same);
        Ok(())
    }
}
