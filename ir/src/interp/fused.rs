//! Reference kernels of the fused ops and their backward ops, on contiguous buffers.

use super::num::Float;

/// RMSNorm over rows of length `h`: `y = x / √(mean(x²)+eps) · w`.
pub fn rms_norm<T: Float>(x: &[T], w: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    let hf = T::from_f64(h as f64);
    for row in x.chunks(h) {
        let ms = row.iter().fold(T::ZERO, |a, v| a + *v * *v) / hf;
        let r = T::ONE / (ms + T::from_f64(eps)).sqrt();
        y.extend(row.iter().zip(w).map(|(v, g)| *v * r * *g));
    }
    y
}

/// RMSNorm backward: `(d_x, d_w)`.
pub fn rms_norm_bwd<T: Float>(x: &[T], w: &[T], dy: &[T], h: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![T::ZERO; h];
    let hf = T::from_f64(h as f64);
    for (row, drow) in x.chunks(h).zip(dy.chunks(h)) {
        let ms = row.iter().fold(T::ZERO, |a, v| a + *v * *v) / hf;
        let r = T::ONE / (ms + T::from_f64(eps)).sqrt();
        // g = dy·w; n = x·r; dx = r·(g − n·mean(g·n))
        let mut gn = T::ZERO;
        for j in 0..h {
            let n = row[j] * r;
            dw[j] += drow[j] * n;
            gn += drow[j] * w[j] * n;
        }
        let mean_gn = gn / hf;
        dx.extend((0..h).map(|j| r * (drow[j] * w[j] - row[j] * r * mean_gn)));
    }
    (dx, dw)
}

/// LayerNorm over rows of length `h`.
pub fn layer_norm<T: Float>(x: &[T], w: &[T], b: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    let hf = T::from_f64(h as f64);
    for row in x.chunks(h) {
        let mean = row.iter().fold(T::ZERO, |a, v| a + *v) / hf;
        let var = row
            .iter()
            .fold(T::ZERO, |a, v| a + (*v - mean) * (*v - mean))
            / hf;
        let r = T::ONE / (var + T::from_f64(eps)).sqrt();
        y.extend((0..h).map(|j| (row[j] - mean) * r * w[j] + b[j]));
    }
    y
}

/// LayerNorm backward: `(d_x, d_w, d_b)`.
pub fn layer_norm_bwd<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    h: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![T::ZERO; h];
    let mut db = vec![T::ZERO; h];
    let hf = T::from_f64(h as f64);
    for (row, drow) in x.chunks(h).zip(dy.chunks(h)) {
        let mean = row.iter().fold(T::ZERO, |a, v| a + *v) / hf;
        let var = row
            .iter()
            .fold(T::ZERO, |a, v| a + (*v - mean) * (*v - mean))
            / hf;
        let r = T::ONE / (var + T::from_f64(eps)).sqrt();
        let mut sg = T::ZERO;
        let mut sgn = T::ZERO;
        for j in 0..h {
            let n = (row[j] - mean) * r;
            let g = drow[j] * w[j];
            dw[j] += drow[j] * n;
            db[j] += drow[j];
            sg += g;
            sgn += g * n;
        }
        let (mg, mgn) = (sg / hf, sgn / hf);
        dx.extend((0..h).map(|j| {
            let n = (row[j] - mean) * r;
            r * (drow[j] * w[j] - mg - n * mgn)
        }));
    }
    (dx, dw, db)
}

/// Rotary (rotate-half): `y = x·cos + rotate_half(x)·sin` with `cos`/`sin` already broadcast to `x`;
/// rows of length `d`, `rotate_half([x1, x2]) = [−x2, x1]`.
pub fn rotary<T: Float>(x: &[T], cos: &[T], sin: &[T], d: usize) -> Vec<T> {
    let half = d / 2;
    let mut y = Vec::with_capacity(x.len());
    for ((row, c), s) in x.chunks(d).zip(cos.chunks(d)).zip(sin.chunks(d)) {
        for j in 0..d {
            let rot = if j < half {
                -row[j + half]
            } else {
                row[j - half]
            };
            y.push(row[j] * c[j] + rot * s[j]);
        }
    }
    y
}

/// Rotary backward: `d_x = d_y·cos + R^T(d_y·sin)` with `R^T([u1, u2]) = [u2, −u1]`.
pub fn rotary_bwd<T: Float>(dy: &[T], cos: &[T], sin: &[T], d: usize) -> Vec<T> {
    let half = d / 2;
    let mut dx = Vec::with_capacity(dy.len());
    for ((row, c), s) in dy.chunks(d).zip(cos.chunks(d)).zip(sin.chunks(d)) {
        for j in 0..d {
            let t = if j < half {
                row[j + half] * s[j + half]
            } else {
                -(row[j - half] * s[j - half])
            };
            dx.push(row[j] * c[j] + t);
        }
    }
    dx
}

/// Attention geometry.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// KV heads.
    pub kvh: usize,
    /// Query length.
    pub sq: usize,
    /// Key length.
    pub sk: usize,
    /// Head dim.
    pub d: usize,
    /// Score scale.
    pub scale: f64,
    /// Causal (key j visible to query i iff j ≤ i).
    pub causal: bool,
}

impl AttnDims {
    fn q_off(&self, b: usize, h: usize, i: usize) -> usize {
        ((b * self.h + h) * self.sq + i) * self.d
    }
    fn k_off(&self, b: usize, h: usize, j: usize) -> usize {
        let kh = h / (self.h / self.kvh);
        ((b * self.kvh + kh) * self.sk + j) * self.d
    }
    fn mask_off(&self, b: usize, h: usize, i: usize) -> usize {
        ((b * self.h + h) * self.sq + i) * self.sk
    }
    /// Scaled, masked scores of row `(b, h, i)` into `s` (−∞ where masked).
    #[allow(clippy::too_many_arguments)] // one attention row: its inputs, its indices and its output
    fn scores<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        mask: Option<&[T]>,
        b: usize,
        h: usize,
        i: usize,
        s: &mut [T],
    ) {
        let qo = self.q_off(b, h, i);
        let qrow = &q[qo..qo + self.d];
        let sc = T::from_f64(self.scale);
        for (j, sj) in s.iter_mut().enumerate() {
            if self.causal && j > i {
                *sj = T::from_f64(f64::NEG_INFINITY);
                continue;
            }
            let ko = self.k_off(b, h, j);
            let dot = qrow
                .iter()
                .zip(&k[ko..ko + self.d])
                .fold(T::ZERO, |a, (x, y)| a + *x * *y);
            *sj = dot * sc;
            if let Some(m) = mask {
                *sj += m[self.mask_off(b, h, i) + j];
            }
        }
    }
}

/// Attention forward: `(out [b,h,sq,d], lse [b,h,sq])`; `mask` is additive, broadcast to `[b,h,sq,sk]`.
pub fn attention<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Option<&[T]>,
    g: &AttnDims,
) -> (Vec<T>, Vec<T>) {
    let mut out = vec![T::ZERO; g.b * g.h * g.sq * g.d];
    let mut lse = vec![T::ZERO; g.b * g.h * g.sq];
    let mut s = vec![T::ZERO; g.sk];
    for b in 0..g.b {
        for h in 0..g.h {
            for i in 0..g.sq {
                g.scores(q, k, mask, b, h, i, &mut s);
                let mx = s
                    .iter()
                    .fold(T::from_f64(f64::NEG_INFINITY), |a, x| a.maxf(*x));
                let mut sum = T::ZERO;
                for x in s.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                let qo = g.q_off(b, h, i);
                let orow = &mut out[qo..qo + g.d];
                for (j, p) in s.iter().enumerate() {
                    if *p == T::ZERO {
                        continue;
                    }
                    let ko = g.k_off(b, h, j);
                    for (o, vv) in orow.iter_mut().zip(&v[ko..ko + g.d]) {
                        *o += *p * *vv;
                    }
                }
                for o in orow.iter_mut() {
                    *o = *o / sum;
                }
                lse[(b * g.h + h) * g.sq + i] = mx + sum.ln();
            }
        }
    }
    (out, lse)
}

/// Attention backward from the saved `lse`: `(d_q, d_k, d_v)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    mask: Option<&[T]>,
    g: &AttnDims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    let mut p = vec![T::ZERO; g.sk];
    let sc = T::from_f64(g.scale);
    for b in 0..g.b {
        for h in 0..g.h {
            for i in 0..g.sq {
                g.scores(q, k, mask, b, h, i, &mut p);
                let l = lse[(b * g.h + h) * g.sq + i];
                for x in p.iter_mut() {
                    *x = (*x - l).exp();
                }
                let qo = g.q_off(b, h, i);
                let dorow = &dout[qo..qo + g.d];
                let delta = dorow
                    .iter()
                    .zip(&out[qo..qo + g.d])
                    .fold(T::ZERO, |a, (x, y)| a + *x * *y);
                for (j, pj) in p.iter().enumerate() {
                    if *pj == T::ZERO {
                        continue;
                    }
                    let ko = g.k_off(b, h, j);
                    // dV_j += p_ij dO_i ; dP_ij = dO_i · V_j ; dS_ij = p_ij (dP_ij − Δ_i)
                    let mut dp = T::ZERO;
                    for t in 0..g.d {
                        dv[ko + t] += *pj * dorow[t];
                        dp += dorow[t] * v[ko + t];
                    }
                    let ds = *pj * (dp - delta) * sc;
                    for t in 0..g.d {
                        dq[qo + t] += ds * k[ko + t];
                        dk[ko + t] += ds * q[qo + t];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Cross-entropy mean over counted rows: logits rows of length `vocab`.
pub fn cross_entropy<T: Float>(
    logits: &[T],
    targets: &[i64],
    vocab: usize,
    ignore: i64,
) -> Result<T, String> {
    let mut total = T::ZERO;
    let mut count = 0usize;
    for (row, t) in logits.chunks(vocab).zip(targets) {
        if *t == ignore {
            continue;
        }
        let ti = class_index(*t, vocab)?;
        let mx = row
            .iter()
            .fold(T::from_f64(f64::NEG_INFINITY), |a, x| a.maxf(*x));
        let sum = row.iter().fold(T::ZERO, |a, x| a + (*x - mx).exp());
        total += mx + sum.ln() - row[ti];
        count += 1;
    }
    Ok(if count == 0 {
        T::ZERO
    } else {
        total / T::from_f64(count as f64)
    })
}

/// Cross-entropy backward: `d_logits = (softmax − onehot)·d_loss / count`, zero on ignored rows.
pub fn cross_entropy_bwd<T: Float>(
    logits: &[T],
    targets: &[i64],
    vocab: usize,
    ignore: i64,
    dloss: T,
) -> Result<Vec<T>, String> {
    let count = targets.iter().filter(|t| **t != ignore).count();
    let scale = if count == 0 {
        T::ZERO
    } else {
        dloss / T::from_f64(count as f64)
    };
    let mut d = Vec::with_capacity(logits.len());
    for (row, t) in logits.chunks(vocab).zip(targets) {
        if *t == ignore {
            d.extend(std::iter::repeat_n(T::ZERO, vocab));
            continue;
        }
        let ti = class_index(*t, vocab)?;
        let mx = row
            .iter()
            .fold(T::from_f64(f64::NEG_INFINITY), |a, x| a.maxf(*x));
        let sum = row.iter().fold(T::ZERO, |a, x| a + (*x - mx).exp());
        for (j, x) in row.iter().enumerate() {
            let p = (*x - mx).exp() / sum;
            let oh = if j == ti { T::ONE } else { T::ZERO };
            d.push((p - oh) * scale);
        }
    }
    Ok(d)
}

fn class_index(t: i64, vocab: usize) -> Result<usize, String> {
    usize::try_from(t)
        .ok()
        .filter(|t| *t < vocab)
        .ok_or_else(|| format!("target {t} outside [0, {vocab})"))
}

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// 1-based step.
    pub step: u64,
}

/// AdamW (PyTorch semantics): returns `(param', m', v')`.
pub fn adamw<T: Float>(
    p: &[T],
    g: &[T],
    m: &[T],
    v: &[T],
    a: &AdamParams,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let bc1 = 1.0 - a.beta1.powi(a.step as i32);
    let bc2 = 1.0 - a.beta2.powi(a.step as i32);
    let mut np = Vec::with_capacity(p.len());
    let mut nm = Vec::with_capacity(p.len());
    let mut nv = Vec::with_capacity(p.len());
    for i in 0..p.len() {
        let (pi, gi) = (p[i].to_f64(), g[i].to_f64());
        let mi = a.beta1 * m[i].to_f64() + (1.0 - a.beta1) * gi;
        let vi = a.beta2 * v[i].to_f64() + (1.0 - a.beta2) * gi * gi;
        let decayed = pi * (1.0 - a.lr * a.weight_decay);
        let upd = a.lr * (mi / bc1) / ((vi / bc2).sqrt() + a.eps);
        np.push(T::from_f64(decayed - upd));
        nm.push(T::from_f64(mi));
        nv.push(T::from_f64(vi));
    }
    (np, nm, nv)
}

/// SGD with momentum (PyTorch semantics, zero-initialized buffer, no dampening): `(param', buf')`.
pub fn sgd<T: Float>(
    p: &[T],
    g: &[T],
    buf: &[T],
    lr: f64,
    momentum: f64,
    wd: f64,
) -> (Vec<T>, Vec<T>) {
    let mut np = Vec::with_capacity(p.len());
    let mut nb = Vec::with_capacity(p.len());
    for i in 0..p.len() {
        let gi = g[i].to_f64() + wd * p[i].to_f64();
        let bi = momentum * buf[i].to_f64() + gi;
        np.push(T::from_f64(p[i].to_f64() - lr * bi));
        nb.push(T::from_f64(bi));
    }
    (np, nb)
}

/// Sizes of a mixture-of-experts layer: tokens, hidden, expert width, experts, experts per token.
#[derive(Clone, Copy, Debug)]
pub struct MoeDims {
    /// Tokens (rows of `x`).
    pub tokens: usize,
    /// Hidden width.
    pub h: usize,
    /// Expert inner width.
    pub f: usize,
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub topk: usize,
    /// Renormalize the chosen scores.
    pub norm_topk: bool,
}

/// The `topk` experts of one token's scores, highest first (ties: lower index first), with their
/// routing weights.
fn moe_route<T: Float>(s: &[T], d: &MoeDims) -> (Vec<usize>, Vec<T>, T) {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|a, b| {
        s[*b]
            .partial_cmp(&s[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    });
    idx.truncate(d.topk);
    let sum = idx.iter().fold(T::ZERO, |a, e| a + s[*e]);
    let denom = if d.norm_topk { sum } else { T::ONE };
    let w = idx.iter().map(|e| s[*e] / denom).collect();
    (idx, w, denom)
}

fn sigmoid<T: Float>(a: T) -> T {
    T::ONE / (T::ONE + (-a).exp())
}

/// One expert's SwiGLU on one token: `(a, u, m, o)` with `a = x·W_gate`, `u = x·W_up`,
/// `m = silu(a)·u`, `o = m·W_down`.
#[allow(clippy::type_complexity)]
fn moe_expert<T: Float>(
    x: &[T],
    wg: &[T],
    wu: &[T],
    wd: &[T],
    e: usize,
    d: &MoeDims,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let (h, f) = (d.h, d.f);
    let (g0, d0) = (e * h * f, e * f * h);
    let mut a = vec![T::ZERO; f];
    let mut u = vec![T::ZERO; f];
    for k in 0..h {
        let xk = x[k];
        for i in 0..f {
            a[i] += xk * wg[g0 + k * f + i];
            u[i] += xk * wu[g0 + k * f + i];
        }
    }
    let m: Vec<T> = (0..f).map(|i| a[i] * sigmoid(a[i]) * u[i]).collect();
    let mut o = vec![T::ZERO; h];
    for i in 0..f {
        for j in 0..h {
            o[j] += m[i] * wd[d0 + i * h + j];
        }
    }
    (a, u, m, o)
}

/// Routed experts forward (see `Op::MoeExperts`): `x [tokens, h]`, `scores [tokens, E]`,
/// `w_gate`/`w_up [E, h, f]`, `w_down [E, f, h]` → `y [tokens, h]`.
pub fn moe_experts<T: Float>(
    x: &[T],
    s: &[T],
    wg: &[T],
    wu: &[T],
    wd: &[T],
    d: &MoeDims,
) -> Vec<T> {
    let mut y = vec![T::ZERO; d.tokens * d.h];
    for t in 0..d.tokens {
        let xt = &x[t * d.h..(t + 1) * d.h];
        let (idx, w, _) = moe_route(&s[t * d.experts..(t + 1) * d.experts], d);
        for (e, we) in idx.iter().zip(&w) {
            let (_, _, _, o) = moe_expert(xt, wg, wu, wd, *e, d);
            for j in 0..d.h {
                y[t * d.h + j] += *we * o[j];
            }
        }
    }
    y
}

/// Routed experts backward: `(d_x, d_scores, d_w_gate, d_w_up, d_w_down)`.
#[allow(clippy::type_complexity)]
pub fn moe_experts_bwd<T: Float>(
    x: &[T],
    s: &[T],
    wg: &[T],
    wu: &[T],
    wd: &[T],
    dy: &[T],
    d: &MoeDims,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let (h, f) = (d.h, d.f);
    let mut dx = vec![T::ZERO; x.len()];
    let mut ds = vec![T::ZERO; s.len()];
    let mut dwg = vec![T::ZERO; wg.len()];
    let mut dwu = vec![T::ZERO; wu.len()];
    let mut dwd = vec![T::ZERO; wd.len()];
    for t in 0..d.tokens {
        let xt = &x[t * h..(t + 1) * h];
        let dyt = &dy[t * h..(t + 1) * h];
        let st = &s[t * d.experts..(t + 1) * d.experts];
        let (idx, w, denom) = moe_route(st, d);
        // d loss / d (routing weight of each chosen expert)
        let mut dw = Vec::with_capacity(idx.len());
        for (e, we) in idx.iter().zip(&w) {
            let (a, u, m, o) = moe_expert(xt, wg, wu, wd, *e, d);
            dw.push((0..h).fold(T::ZERO, |acc, j| acc + dyt[j] * o[j]));
            let (g0, d0) = (e * h * f, e * f * h);
            let mut dm = vec![T::ZERO; f];
            for i in 0..f {
                for j in 0..h {
                    let doj = *we * dyt[j];
                    dm[i] += doj * wd[d0 + i * h + j];
                    dwd[d0 + i * h + j] += m[i] * doj;
                }
            }
            for i in 0..f {
                let sg = sigmoid(a[i]);
                let da = dm[i] * u[i] * sg * (T::ONE + a[i] * (T::ONE - sg));
                let du = dm[i] * a[i] * sg;
                for k in 0..h {
                    dwg[g0 + k * f + i] += xt[k] * da;
                    dwu[g0 + k * f + i] += xt[k] * du;
                    dx[t * h + k] += wg[g0 + k * f + i] * da + wu[g0 + k * f + i] * du;
                }
            }
        }
        let dst = &mut ds[t * d.experts..(t + 1) * d.experts];
        if d.norm_topk {
            // w_e = s_e / S: d s_c = d_w_c / S − Σ_e d_w_e · s_e / S²
            let cross = idx
                .iter()
                .zip(&dw)
                .fold(T::ZERO, |acc, (e, g)| acc + *g * st[*e])
                / (denom * denom);
            for (e, g) in idx.iter().zip(&dw) {
                dst[*e] = *g / denom - cross;
            }
        } else {
            for (e, g) in idx.iter().zip(&dw) {
                dst[*e] = *g;
            }
        }
    }
    (dx, ds, dwg, dwu, dwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_backward_matches_finite_differences() {
        let g = AttnDims {
            b: 1,
            h: 2,
            kvh: 1,
            sq: 3,
            sk: 3,
            d: 2,
            scale: 0.7,
            causal: true,
        };
        let q: Vec<f64> = (0..12).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3).collect();
        let k: Vec<f64> = (0..6).map(|i| ((i * 3 % 4) as f64 - 1.5) * 0.4).collect();
        let v: Vec<f64> = (0..6).map(|i| (i as f64 - 2.5) * 0.2).collect();
        let w: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            attention(q, k, v, None, &g)
                .0
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum()
        };
        let (out, lse) = attention(&q, &k, &v, None, &g);
        let (dq, dk, dv) = attention_bwd(&q, &k, &v, &out, &lse, &w, None, &g);
        let h = 1e-6;
        for i in 0..q.len() {
            let (mut a, mut b) = (q.clone(), q.clone());
            a[i] += h;
            b[i] -= h;
            assert!(((loss(&a, &k, &v) - loss(&b, &k, &v)) / (2.0 * h) - dq[i]).abs() < 1e-8);
        }
        for i in 0..k.len() {
            let (mut a, mut b) = (k.clone(), k.clone());
            a[i] += h;
            b[i] -= h;
            assert!(((loss(&q, &a, &v) - loss(&q, &b, &v)) / (2.0 * h) - dk[i]).abs() < 1e-8);
            let (mut a, mut b) = (v.clone(), v.clone());
            a[i] += h;
            b[i] -= h;
            assert!(((loss(&q, &k, &a) - loss(&q, &k, &b)) / (2.0 * h) - dv[i]).abs() < 1e-8);
        }
    }

    #[test]
    fn norms_backward_match_finite_differences() {
        let x: Vec<f64> = (0..8).map(|i| (i as f64 * 0.9).cos()).collect();
        let w: Vec<f64> = (0..4).map(|i| 1.0 + i as f64 * 0.1).collect();
        let bb: Vec<f64> = vec![0.1, -0.2, 0.3, 0.0];
        let dy: Vec<f64> = (0..8).map(|i| (i as f64 * 0.5).sin()).collect();
        let f_rms = |x: &[f64], w: &[f64]| {
            rms_norm(x, w, 4, 1e-5)
                .iter()
                .zip(&dy)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        let f_ln = |x: &[f64], w: &[f64]| {
            layer_norm(x, w, &bb, 4, 1e-5)
                .iter()
                .zip(&dy)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        let (dx, dw) = rms_norm_bwd(&x, &w, &dy, 4, 1e-5);
        let (lx, lw, _) = layer_norm_bwd(&x, &w, &dy, 4, 1e-5);
        let h = 1e-6;
        for i in 0..8 {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += h;
            b[i] -= h;
            assert!(((f_rms(&a, &w) - f_rms(&b, &w)) / (2.0 * h) - dx[i]).abs() < 1e-7);
            assert!(((f_ln(&a, &w) - f_ln(&b, &w)) / (2.0 * h) - lx[i]).abs() < 1e-7);
        }
        for i in 0..4 {
            let (mut a, mut b) = (w.clone(), w.clone());
            a[i] += h;
            b[i] -= h;
            assert!(((f_rms(&x, &a) - f_rms(&x, &b)) / (2.0 * h) - dw[i]).abs() < 1e-7);
            assert!(((f_ln(&x, &a) - f_ln(&x, &b)) / (2.0 * h) - lw[i]).abs() < 1e-7);
        }
    }

    #[test]
    fn rotary_backward_is_the_transpose() {
        let x: Vec<f64> = (0..8).map(|i| i as f64 - 3.0).collect();
        let c: Vec<f64> = (0..8).map(|i| (i as f64).cos()).collect();
        let s: Vec<f64> = (0..8).map(|i| (i as f64).sin()).collect();
        let dy: Vec<f64> = (0..8).map(|i| (i as f64 * 1.3).sin()).collect();
        let y = rotary(&x, &c, &s, 4);
        let dx = rotary_bwd(&dy, &c, &s, 4);
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
    }
    #[test]
    fn moe_experts_backward_matches_finite_differences() {
        for norm_topk in [false, true] {
            let d = MoeDims {
                tokens: 3,
                h: 3,
                f: 2,
                experts: 4,
                topk: 2,
                norm_topk,
            };
            let mk = |n: usize, a: f64, b: f64| -> Vec<f64> {
                (0..n).map(|i| ((i as f64 * a).sin() + b) * 0.5).collect()
            };
            let x = mk(9, 0.71, 0.1);
            // Distinct scores keep the top-k choice fixed under the perturbation.
            let s: Vec<f64> = (0..12)
                .map(|i| 0.1 + ((i * 7) % 12) as f64 * 0.07)
                .collect();
            let (wg, wu, wd) = (mk(24, 0.37, 0.0), mk(24, 0.53, -0.1), mk(24, 0.29, 0.2));
            let r = mk(9, 0.9, 0.0);
            let loss = |x: &[f64], s: &[f64], wg: &[f64], wu: &[f64], wd: &[f64]| -> f64 {
                moe_experts(x, s, wg, wu, wd, &d)
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let (dx, ds, dwg, dwu, dwd) = moe_experts_bwd(&x, &s, &wg, &wu, &wd, &r, &d);
            let eps = 1e-6;
            let check = |which: usize, grad: &[f64]| {
                let base: [&Vec<f64>; 5] = [&x, &s, &wg, &wu, &wd];
                for i in 0..grad.len() {
                    let (mut p, mut m) = (base.map(|v| v.clone()), base.map(|v| v.clone()));
                    p[which][i] += eps;
                    m[which][i] -= eps;
                    let fd = (loss(&p[0], &p[1], &p[2], &p[3], &p[4])
                        - loss(&m[0], &m[1], &m[2], &m[3], &m[4]))
                        / (2.0 * eps);
                    assert!(
                        (fd - grad[i]).abs() < 1e-7,
                        "input {which}[{i}]: {fd} vs {}",
                        grad[i]
                    );
                }
            };
            check(0, &dx);
            check(1, &ds);
            check(2, &dwg);
            check(3, &dwu);
            check(4, &dwd);
        }
    }
}
