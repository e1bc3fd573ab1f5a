//! Dense symmetric matrices of feature dimension (at most a few dozen): Cholesky factor,
//! triangular solves, products and a Jacobi eigen-decomposition (the solves, inverse and
//! log-determinant beyond the forward solve serve the tests).
//!
//! Hand-written rather than a linear-algebra crate on purpose: the matrices are at most
//! 59×59, the population learning needs only these operations, and each is a textbook loop of
//! a few lines, where `nalgebra` would add a dozen crates to a 2-core CI build. Never panics on bad
//! input: a matrix that is not positive definite is an `Err`, never a NaN passed on.

/// A square matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mat {
    pub(crate) n: usize,
    pub(crate) a: Vec<f64>,
}

impl Mat {
    /// The n×n zero matrix.
    pub(crate) fn zeros(n: usize) -> Mat {
        Mat {
            n,
            a: vec![0.0; n * n],
        }
    }

    /// The diagonal matrix with `d` on its diagonal.
    pub(crate) fn diag(d: &[f64]) -> Mat {
        let mut m = Mat::zeros(d.len());
        for (i, v) in d.iter().enumerate() {
            m.a[i * d.len() + i] = *v;
        }
        m
    }

    /// Element (i, j).
    #[inline]
    pub(crate) fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }

    /// Mutable element (i, j).
    #[inline]
    pub(crate) fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.a[i * self.n + j]
    }

    /// The diagonal.
    pub(crate) fn diagonal(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.at(i, i)).collect()
    }

    /// `self + k · other`.
    pub(crate) fn add_scaled(&self, k: f64, other: &Mat) -> Mat {
        Mat {
            n: self.n,
            a: self
                .a
                .iter()
                .zip(&other.a)
                .map(|(x, y)| x + k * y)
                .collect(),
        }
    }

    /// `k · self`.
    pub(crate) fn scaled(&self, k: f64) -> Mat {
        Mat {
            n: self.n,
            a: self.a.iter().map(|x| k * x).collect(),
        }
    }

    /// Adds `k · x xᵀ` in place.
    #[inline]
    pub(crate) fn add_outer(&mut self, k: f64, x: &[f64]) {
        let n = self.n;
        for i in 0..n {
            let kx = k * x[i];
            let row = &mut self.a[i * n..(i + 1) * n];
            for (r, xj) in row.iter_mut().zip(x) {
                *r += kx * xj;
            }
        }
    }

    /// `self · other`.
    pub(crate) fn mul(&self, other: &Mat) -> Mat {
        let n = self.n;
        let mut out = Mat::zeros(n);
        for i in 0..n {
            for k in 0..n {
                let a = self.at(i, k);
                if a == 0.0 {
                    continue;
                }
                for j in 0..n {
                    out.a[i * n + j] += a * other.a[k * n + j];
                }
            }
        }
        out
    }

    /// The transpose.
    pub(crate) fn transpose(&self) -> Mat {
        let n = self.n;
        let mut out = Mat::zeros(n);
        for i in 0..n {
            for j in 0..n {
                out.a[j * n + i] = self.a[i * n + j];
            }
        }
        out
    }

    /// Symmetrizes in place (rounding can leave the two triangles a few ulps apart).
    pub(crate) fn symmetrize(&mut self) {
        let n = self.n;
        for i in 0..n {
            for j in 0..i {
                let m = 0.5 * (self.a[i * n + j] + self.a[j * n + i]);
                self.a[i * n + j] = m;
                self.a[j * n + i] = m;
            }
        }
    }
}

/// The lower Cholesky factor L of a symmetric positive definite matrix (A = L Lᵀ).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cholesky {
    l: Mat,
}

/// The matrix handed to [`Cholesky::new`] is not (numerically) positive definite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NotPositiveDefinite;

impl Cholesky {
    /// Factors `a`.
    pub(crate) fn new(a: &Mat) -> Result<Cholesky, NotPositiveDefinite> {
        let n = a.n;
        let mut l = Mat::zeros(n);
        for j in 0..n {
            let mut d = a.at(j, j);
            for k in 0..j {
                d -= l.at(j, k) * l.at(j, k);
            }
            if d.is_nan() || d <= 0.0 || d.is_infinite() {
                return Err(NotPositiveDefinite);
            }
            let d = d.sqrt();
            *l.at_mut(j, j) = d;
            for i in j + 1..n {
                let mut s = a.at(i, j);
                for k in 0..j {
                    s -= l.at(i, k) * l.at(j, k);
                }
                *l.at_mut(i, j) = s / d;
            }
        }
        Ok(Cholesky { l })
    }

    /// log det A.
    #[cfg(test)]
    pub(crate) fn log_det(&self) -> f64 {
        (0..self.l.n).map(|i| 2.0 * self.l.at(i, i).ln()).sum()
    }

    /// Solves L y = b in place (forward substitution).
    #[inline]
    pub(crate) fn solve_lower(&self, b: &mut [f64]) {
        let n = self.l.n;
        for i in 0..n {
            let row = &self.l.a[i * n..i * n + i];
            let s: f64 = row.iter().zip(&b[..i]).map(|(l, y)| l * y).sum();
            b[i] = (b[i] - s) / self.l.a[i * n + i];
        }
    }

    /// Solves Lᵀ x = y in place (back substitution).
    #[cfg(test)]
    pub(crate) fn solve_upper(&self, b: &mut [f64]) {
        let n = self.l.n;
        for i in (0..n).rev() {
            let mut s = b[i];
            for (k, bk) in b.iter().enumerate().skip(i + 1) {
                s -= self.l.at(k, i) * bk;
            }
            b[i] = s / self.l.at(i, i);
        }
    }

    /// Solves A x = b in place.
    #[cfg(test)]
    pub(crate) fn solve(&self, b: &mut [f64]) {
        self.solve_lower(b);
        self.solve_upper(b);
    }

    /// xᵀ A⁻¹ x, using `scratch` (length n) as working space.
    #[inline]
    pub(crate) fn quad_form(&self, x: &[f64], scratch: &mut [f64]) -> f64 {
        scratch.copy_from_slice(x);
        self.solve_lower(scratch);
        scratch.iter().map(|v| v * v).sum()
    }

    /// A⁻¹.
    #[cfg(test)]
    pub(crate) fn inverse(&self) -> Mat {
        let n = self.l.n;
        let mut inv = Mat::zeros(n);
        let mut col = vec![0.0; n];
        for j in 0..n {
            col.iter_mut().for_each(|c| *c = 0.0);
            col[j] = 1.0;
            self.solve(&mut col);
            for (i, c) in col.iter().enumerate() {
                inv.a[i * n + j] = *c;
            }
        }
        inv.symmetrize();
        inv
    }
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: `(values, vectors)`
/// with the eigenvectors as the columns of `vectors`.
pub(crate) fn sym_eigen(a: &Mat) -> (Vec<f64>, Mat) {
    let n = a.n;
    let mut m = a.clone();
    let mut v = Mat::diag(&vec![1.0; n]);
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m.at(i, j) * m.at(i, j))
            .sum();
        let scale: f64 = m.a.iter().map(|x| x * x).sum();
        if off <= 1e-22 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m.at(p, q);
                if apq == 0.0 {
                    continue;
                }
                let theta = (m.at(q, q) - m.at(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let mkp = m.at(k, p);
                    let mkq = m.at(k, q);
                    *m.at_mut(k, p) = c * mkp - s * mkq;
                    *m.at_mut(k, q) = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let mpk = m.at(p, k);
                    let mqk = m.at(q, k);
                    *m.at_mut(p, k) = c * mpk - s * mqk;
                    *m.at_mut(q, k) = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let vkp = v.at(k, p);
                    let vkq = v.at(k, q);
                    *v.at_mut(k, p) = c * vkp - s * vkq;
                    *v.at_mut(k, q) = s * vkp + c * vkq;
                }
            }
        }
    }
    (m.diagonal(), v)
}

/// The nearest (in Frobenius norm) symmetric matrix whose eigenvalues are all at least
/// `floor`: makes a moment estimate that came out indefinite usable as a covariance.
pub(crate) fn clip_eigen(a: &Mat, floor: f64) -> Mat {
    let (vals, vecs) = sym_eigen(a);
    let n = a.n;
    let mut out = Mat::zeros(n);
    for (k, lam) in vals.iter().enumerate() {
        let lam = lam.max(floor);
        for i in 0..n {
            let vik = vecs.at(i, k) * lam;
            for j in 0..n {
                out.a[i * n + j] += vik * vecs.at(j, k);
            }
        }
    }
    out.symmetrize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd() -> Mat {
        Mat {
            n: 3,
            a: vec![4.0, 2.0, 0.6, 2.0, 3.0, 0.4, 0.6, 0.4, 2.0],
        }
    }

    #[test]
    fn cholesky_solves_and_inverts() {
        let a = spd();
        let c = Cholesky::new(&a).unwrap();
        let mut x = vec![1.0, -2.0, 0.5];
        c.solve(&mut x);
        let ax: Vec<f64> = (0..3)
            .map(|i| (0..3).map(|j| a.at(i, j) * x[j]).sum())
            .collect();
        for (got, want) in ax.iter().zip([1.0, -2.0, 0.5]) {
            assert!((got - want).abs() < 1e-12);
        }
        let id = a.mul(&c.inverse());
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((id.at(i, j) - want).abs() < 1e-12);
            }
        }
        // det = 4(6 - .16) - 2(4 - .24) + .6(.8 - 1.8) = 23.36 - 7.52 - 0.6 = 15.24
        assert!((c.log_det() - 15.24f64.ln()).abs() < 1e-12);
        assert!(Cholesky::new(&Mat::diag(&[1.0, -1.0])).is_err());
    }

    #[test]
    fn jacobi_reconstructs_and_clips() {
        let a = spd();
        let (vals, vecs) = sym_eigen(&a);
        let back = clip_eigen(&a, f64::NEG_INFINITY);
        for (x, y) in back.a.iter().zip(&a.a) {
            assert!((x - y).abs() < 1e-10);
        }
        let vtv = vecs.transpose().mul(&vecs);
        for i in 0..3 {
            assert!((vtv.at(i, i) - 1.0).abs() < 1e-10);
        }
        let sum: f64 = vals.iter().sum();
        assert!((sum - 9.0).abs() < 1e-10, "trace is kept");
        let indefinite = Mat {
            n: 2,
            a: vec![1.0, 2.0, 2.0, 1.0],
        };
        let fixed = clip_eigen(&indefinite, 0.1);
        assert!(Cholesky::new(&fixed).is_ok());
    }
}
