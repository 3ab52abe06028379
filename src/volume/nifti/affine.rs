//! The affine by nibabel's rules: sform if `sform_code > 0`, else qform if `qform_code > 0`,
//! else the fallback from the shape and zooms (x flipped).

use super::header::Header;

impl Header {
    fn qform(&self) -> [[f64; 4]; 4] {
        let [b, c, d] = self.quatern;
        let thresh = if self.version == 1 {
            f32::EPSILON as f64 * 3.0
        } else {
            f64::EPSILON * 3.0
        };
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2.abs() < thresh {
            0.0
        } else {
            w2.max(0.0).sqrt()
        };
        let (w, x, y, z) = (a, b, c, d);
        let nq = w * w + x * x + y * y + z * z;
        let r = if nq < f64::EPSILON {
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        } else {
            let s = 2.0 / nq;
            let (xs, ys, zs) = (x * s, y * s, z * s);
            let (wx, wy, wz) = (w * xs, w * ys, w * zs);
            let (xx, xy, xz) = (x * xs, x * ys, x * zs);
            let (yy, yz, zz) = (y * ys, y * zs, z * zs);
            [
                [1.0 - (yy + zz), xy - wz, xz + wy],
                [xy + wz, 1.0 - (xx + zz), yz - wx],
                [xz - wy, yz + wx, 1.0 - (xx + yy)],
            ]
        };
        let mut vox = [self.pixdim[1], self.pixdim[2], self.pixdim[3]];
        vox[2] *= self.pixdim[0];
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] = r[i][j] * vox[j];
            }
            out[i][3] = self.qoffset[i];
        }
        out[3][3] = 1.0;
        out
    }

    fn base_affine(&self) -> [[f64; 4]; 4] {
        let nd = self.dim[0] as usize;
        let mut shape = [1.0f64; 3];
        let mut zooms = [1.0f64; 3];
        for i in 0..nd.min(3) {
            shape[i] = self.dim[i + 1] as f64;
            zooms[i] = self.pixdim[i + 1];
        }
        zooms[0] *= -1.0;
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            out[i][i] = zooms[i];
            out[i][3] = -((shape[i] - 1.0) / 2.0) * zooms[i];
        }
        out[3][3] = 1.0;
        out
    }

    /// nibabel's `get_best_affine()`.
    pub fn best_affine(&self) -> [[f64; 4]; 4] {
        if self.sform_code != 0 {
            let mut out = [[0.0; 4]; 4];
            out[..3].copy_from_slice(&self.srow);
            out[3][3] = 1.0;
            out
        } else if self.qform_code != 0 {
            self.qform()
        } else {
            self.base_affine()
        }
    }
}
