//! Shape-generic kernels: broadcasting, data movement, reductions and matrix products on contiguous
//! row-major buffers.

use super::num::Float;

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// NumPy broadcast of two shapes, `None` if incompatible.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Materializes `data` (shape `inp`) broadcast to `out` (which `inp` must broadcast to).
pub fn expand_to<X: Copy>(data: &[X], inp: &[usize], out: &[usize]) -> Vec<X> {
    let n: usize = out.iter().product();
    if inp == out {
        return data.to_vec();
    }
    if data.len() == 1 {
        return vec![data[0]; n];
    }
    let r = out.len();
    let pad = r - inp.len();
    let in_strides = strides(inp);
    // Stride of each output axis in the input (0 where broadcast).
    let st: Vec<usize> = (0..r)
        .map(|i| {
            if i < pad || inp[i - pad] == 1 {
                0
            } else {
                in_strides[i - pad]
            }
        })
        .collect();
    let mut res = Vec::with_capacity(n);
    if n == 0 {
        return res;
    }
    let last = out[r - 1];
    let lst = st[r - 1];
    let mut idx = vec![0usize; r];
    let mut base = 0usize;
    loop {
        if lst == 1 {
            res.extend_from_slice(&data[base..base + last]);
        } else if lst == 0 {
            res.extend(std::iter::repeat_n(data[base], last));
        } else {
            res.extend((0..last).map(|j| data[base + j * lst]));
        }
        // Odometer over all axes but the last.
        let mut ax = r - 1;
        loop {
            if ax == 0 {
                return res;
            }
            ax -= 1;
            idx[ax] += 1;
            base += st[ax];
            if idx[ax] < out[ax] {
                break;
            }
            base -= st[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
}

/// Elementwise binary with broadcasting.
pub fn map2<A: Copy, B: Copy, C>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    out: &[usize],
    f: impl Fn(A, B) -> C,
) -> Vec<C> {
    if ash == bsh {
        return a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
    }
    let n: usize = out.iter().product();
    if b.len() == 1 && a.len() == n {
        return a.iter().map(|x| f(*x, b[0])).collect();
    }
    if a.len() == 1 && b.len() == n {
        return b.iter().map(|y| f(a[0], *y)).collect();
    }
    let ae;
    let av: &[A] = if ash == out {
        a
    } else {
        ae = expand_to(a, ash, out);
        &ae
    };
    let be;
    let bv: &[B] = if bsh == out {
        b
    } else {
        be = expand_to(b, bsh, out);
        &be
    };
    av.iter().zip(bv).map(|(x, y)| f(*x, *y)).collect()
}

/// Axis permutation.
pub fn transpose<X: Copy>(data: &[X], shape: &[usize], perm: &[usize]) -> (Vec<X>, Vec<usize>) {
    let r = shape.len();
    let out: Vec<usize> = perm.iter().map(|p| shape[*p]).collect();
    let ist = strides(shape);
    let st: Vec<usize> = perm.iter().map(|p| ist[*p]).collect();
    let n = data.len();
    let mut res = Vec::with_capacity(n);
    if n == 0 || r == 0 {
        return (data.to_vec(), out);
    }
    let mut idx = vec![0usize; r];
    let mut base = 0usize;
    let last = out[r - 1];
    let lst = st[r - 1];
    loop {
        if lst == 1 {
            res.extend_from_slice(&data[base..base + last]);
        } else {
            res.extend((0..last).map(|j| data[base + j * lst]));
        }
        let mut ax = r - 1;
        loop {
            if ax == 0 {
                return (res, out);
            }
            ax -= 1;
            idx[ax] += 1;
            base += st[ax];
            if idx[ax] < out[ax] {
                break;
            }
            base -= st[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
}

/// Splits a shape around `axes` (sorted): returns for each element of the reduced output the input
/// offsets that fold into it, in the form (outer, reduced, inner) sizes when the axes are contiguous.
fn contiguous_axes(axes: &[usize]) -> bool {
    axes.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Generic fold over `axes` (sorted, unique); `init` starts each output element.
pub fn fold_axes<X: Copy, Y: Copy>(
    data: &[X],
    shape: &[usize],
    axes: &[usize],
    init: Y,
    f: impl Fn(Y, X) -> Y,
) -> Vec<Y> {
    if axes.is_empty() {
        return data.iter().map(|x| f(init, *x)).collect();
    }
    if contiguous_axes(axes) {
        let a0 = axes[0];
        let a1 = *axes.last().unwrap_or(&a0);
        let outer: usize = shape[..a0].iter().product();
        let red: usize = shape[a0..=a1].iter().product();
        let inner: usize = shape[a1 + 1..].iter().product();
        let mut out = vec![init; outer * inner];
        for o in 0..outer {
            for r in 0..red {
                let src = &data[(o * red + r) * inner..(o * red + r + 1) * inner];
                let dst = &mut out[o * inner..(o + 1) * inner];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f(*d, *s);
                }
            }
        }
        return out;
    }
    // Move reduced axes last, then fold contiguously.
    let mut perm: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept = perm.len();
    perm.extend_from_slice(axes);
    let (t, tsh) = transpose(data, shape, &perm);
    let red_axes: Vec<usize> = (kept..shape.len()).collect();
    fold_axes(&t, &tsh, &red_axes, init, f)
}

/// The shape after reducing `axes`.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keep: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, d) in shape.iter().enumerate() {
        if axes.contains(&i) {
            if keep {
                out.push(1);
            }
        } else {
            out.push(*d);
        }
    }
    out
}

/// Batched matrix product `[.., m, k] × [.., k, n]` with broadcast leading axes (both operands at least
/// rank 2), i-k-j loop order over contiguous rows.
pub fn matmul<T: Float>(
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
) -> Option<(Vec<T>, Vec<usize>)> {
    let (ra, rb) = (ash.len(), bsh.len());
    let (m, k) = (ash[ra - 2], ash[ra - 1]);
    let (k2, n) = (bsh[rb - 2], bsh[rb - 1]);
    if k != k2 {
        return None;
    }
    let batch = broadcast_shape(&ash[..ra - 2], &bsh[..rb - 2])?;
    let nb: usize = batch.iter().product();
    // Offsets of each batch's matrix in a and b.
    let amats: Vec<usize> = (0..ash[..ra - 2].iter().product::<usize>()).collect();
    let bmats: Vec<usize> = (0..bsh[..rb - 2].iter().product::<usize>()).collect();
    let ai = expand_to(&amats, &ash[..ra - 2], &batch);
    let bi = expand_to(&bmats, &bsh[..rb - 2], &batch);
    let mut out = vec![T::ZERO; nb * m * n];
    for bt in 0..nb {
        let am = &a[ai[bt] * m * k..(ai[bt] + 1) * m * k];
        let bm = &b[bi[bt] * k * n..(bi[bt] + 1) * k * n];
        let om = &mut out[bt * m * n..(bt + 1) * m * n];
        gemm(am, bm, om, m, k, n);
    }
    let mut shape = batch;
    shape.push(m);
    shape.push(n);
    Some((out, shape))
}

/// `c += a[m,k] · b[k,n]`, i-k-j order.
pub fn gemm<T: Float>(a: &[T], b: &[T], c: &mut [T], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let crow = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let av = a[i * k + p];
            if av == T::ZERO {
                continue;
            }
            let brow = &b[p * n..(p + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += av * *bv;
            }
        }
    }
}

/// Strided slice along one axis; `idx` lists the kept indices.
pub fn take_axis<X: Copy>(data: &[X], shape: &[usize], axis: usize, idx: &[usize]) -> Vec<X> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let d = shape[axis];
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for i in idx {
            let s = (o * d + i) * inner;
            out.extend_from_slice(&data[s..s + inner]);
        }
    }
    out
}

/// Concatenation along an axis.
pub fn concat<X: Copy>(parts: &[(&[X], &[usize])], axis: usize) -> Vec<X> {
    let outer: usize = parts[0].1[..axis].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        for (d, sh) in parts {
            let chunk: usize = sh[axis..].iter().product();
            out.extend_from_slice(&d[o * chunk..(o + 1) * chunk]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_expand() {
        assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(broadcast_shape(&[2, 3], &[4]), None);
        let e = expand_to(&[1, 2, 3], &[3], &[2, 3]);
        assert_eq!(e, vec![1, 2, 3, 1, 2, 3]);
        let e = expand_to(&[1, 2], &[2, 1], &[2, 3]);
        assert_eq!(e, vec![1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn transpose_and_reduce() {
        let d: Vec<i32> = (0..6).collect();
        let (t, s) = transpose(&d, &[2, 3], &[1, 0]);
        assert_eq!((t, s), (vec![0, 3, 1, 4, 2, 5], vec![3, 2]));
        let r = fold_axes(&d, &[2, 3], &[0], 0, |a, b| a + b);
        assert_eq!(r, vec![3, 5, 7]);
        let d: Vec<i32> = (0..24).collect();
        let r = fold_axes(&d, &[2, 3, 4], &[0, 2], 0, |a, b| a + b);
        assert_eq!(
            r,
            vec![
                1 + 2 + 3 + 12 + 13 + 14 + 15,
                4 + 5 + 6 + 7 + 16 + 17 + 18 + 19,
                8 + 9 + 10 + 11 + 20 + 21 + 22 + 23
            ]
        );
    }

    #[test]
    fn matmul_broadcasts_batches() {
        let a = vec![1.0f64, 2.0, 3.0, 4.0]; // [1,2,2]
        let b = vec![1.0f64, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0]; // [2,2,2]
        let (c, s) = matmul(&a, &[1, 2, 2], &b, &[2, 2, 2]).unwrap();
        assert_eq!(s, vec![2, 2, 2]);
        assert_eq!(c, vec![1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0]);
    }
}
