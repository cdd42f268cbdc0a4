//! Row kernels compiled for the best vector instructions this processor has, chosen at run
//! time, and the f32 `exp` they are built on.
//!
//! The binaries target baseline x86-64, where glibc's scalar `expf` cost 5-8% of a
//! teacher-forced pass (log-softmax over the vocabulary, SwiGLU's silu). [`multiversion!`]
//! compiles one body three times (AVX-512, AVX2 + FMA, portable) and picks one per call.
//! Every operation in a body is IEEE-exact given its inputs (fused multiply-adds, adds,
//! compares, bit shifts) and each element lands in a fixed lane, so all three variants give the
//! same bits; the portable one is merely slower (its `mul_add` is a library call).

/// Lanes of the reductions: one AVX-512 register of f32, two AVX2 ones.
const LANES: usize = 16;

/// Defines `fn name(args) -> ret` that runs its body compiled for AVX-512, AVX2 + FMA or the
/// portable baseline, whichever this processor has. The body is inlined into each variant, so
/// it and everything it calls must be `#[inline(always)]` to be vectorised.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { portable($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { portable($($arg),*) }
                // Safety: each variant runs only where its instructions were detected.
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// e^x in f32 within 1 ulp of the exact value (Cephes' `expf`: x = n ln 2 + r with |r| <=
/// ln 2 / 2 in two exact steps, e^r by a degree-7 polynomial, times 2^n built in the exponent
/// bits). 0 below -87.34 (where e^x leaves the normal range), infinity above 88.37, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOW: f32 = -87.336_54;
    const HIGH: f32 = 88.376_26;
    // Adding 1.5 * 2^23 rounds to an integer (ties to even), which the low mantissa bits hold.
    const ROUND: f32 = 12_582_912.0;
    // NaN stays NaN.
    let xc = x.clamp(LOW, HIGH);
    let t = xc.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in 9 bits.
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e_r = p.mul_add(r * r, r) + 1.0;
    let y = e_r * f32::from_bits(((n_bits + 127) << 23) as u32);
    if x < LOW {
        0.0
    } else if x > HIGH {
        f32::INFINITY
    } else {
        y
    }
}

/// The logistic sigmoid 1 / (1 + e^-x).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Adds the lanes in a fixed order.
#[inline(always)]
fn reduce(acc: [f64; LANES]) -> f64 {
    let mut s = 0.0;
    for a in acc {
        s += a;
    }
    s
}

multiversion! {
    /// The largest value of a row (-infinity for an empty one).
    pub(crate) fn max(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let body = row.chunks_exact(LANES);
        for (i, &v) in body.remainder().iter().enumerate() {
            acc[i] = if v > acc[i] { v } else { acc[i] };
        }
        for c in body {
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        acc.into_iter().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
    }
}

multiversion! {
    /// Sum of e^(v - shift) over a row, accumulated in f64 (a 150k-token vocabulary is a long
    /// sum for f32).
    pub(crate) fn sum_exp(row: &[f32], shift: f32) -> f64 {
        let mut acc = [0f64; LANES];
        let body = row.chunks_exact(LANES);
        for (i, &v) in body.remainder().iter().enumerate() {
            acc[i] += exp(v - shift) as f64;
        }
        for c in body {
            for l in 0..LANES {
                acc[l] += exp(c[l] - shift) as f64;
            }
        }
        reduce(acc)
    }
}

multiversion! {
    /// out = e^(row - shift) elementwise; returns the sum of out in f64.
    pub(crate) fn exp_into(row: &[f32], shift: f32, out: &mut [f32]) -> f64 {
        assert_eq!(row.len(), out.len());
        let mut acc = [0f64; LANES];
        let body = row.len() / LANES * LANES;
        for (i, (y, &v)) in out[body..].iter_mut().zip(&row[body..]).enumerate() {
            *y = exp(v - shift);
            acc[i] += *y as f64;
        }
        for (ys, c) in out[..body].chunks_exact_mut(LANES).zip(row.chunks_exact(LANES)) {
            for l in 0..LANES {
                ys[l] = exp(c[l] - shift);
                acc[l] += ys[l] as f64;
            }
        }
        reduce(acc)
    }
}

multiversion! {
    /// SwiGLU's gating: out = silu(g) u = g / (1 + e^-g) u.
    pub(crate) fn silu_mul_into(g: &[f32], u: &[f32], out: &mut [f32]) {
        for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *y = g / (1.0 + exp(-g)) * u;
        }
    }
}

multiversion! {
    /// The backward pass of [`silu_mul_into`]: with s = sigmoid(g),
    /// dg = dy u s (1 + g (1 - s)) and du = dy g s.
    pub(crate) fn silu_mul_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        let inputs = g.iter().zip(u).zip(dy);
        for ((dg, du), ((&g, &u), &dy)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
            let s = sigmoid(g);
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
            *du = dy * g * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_one_ulp_of_the_correctly_rounded_value_over_its_range() {
        let (low, high) = (-87.33f32, 88.37f32);
        let steps = 2_000_000;
        let mut worst = (0, 0.0f32);
        for i in 0..=steps {
            let x = low + (high - low) * (i as f32 / steps as f32);
            let want = (x as f64).exp() as f32;
            let d = ulps(exp(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 1, "exp({}) is {} ulps off", worst.1, worst.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_limits_follow_ieee() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    /// Lengths with and without a remainder past the 16 lanes.
    fn rows() -> Vec<Vec<f32>> {
        [1usize, 15, 16, 17, 100, 32000]
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn row_kernels_agree_with_plain_loops_over_std_exp() {
        for row in rows() {
            let want_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&row), want_max);
            let want_sum: f64 = row.iter().map(|&v| ((v - want_max) as f64).exp()).sum();
            let got = sum_exp(&row, want_max);
            assert!(
                (got - want_sum).abs() <= 1e-6 * want_sum,
                "{got} vs {want_sum}"
            );
            let mut out = vec![0f32; row.len()];
            let into_sum = exp_into(&row, want_max, &mut out);
            assert_eq!(into_sum, got, "exp_into sums what sum_exp sums");
            for (&y, &v) in out.iter().zip(&row) {
                assert!(
                    ulps(y, (v - want_max).exp()) <= 2,
                    "e^{} = {y}",
                    v - want_max
                );
            }
        }
    }

    #[test]
    fn silu_kernels_agree_with_their_formulas_over_std_exp() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 40.0).collect();
        let u: Vec<f32> = (0..1000)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0)
            .collect();
        let dy: Vec<f32> = (0..1000)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let mut y = vec![0f32; 1000];
        silu_mul_into(&g, &u, &mut y);
        let (mut dg, mut du) = (vec![0f32; 1000], vec![0f32; 1000]);
        silu_mul_backward(&g, &u, &dy, &mut dg, &mut du);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
        for i in 0..1000 {
            let s = 1.0 / (1.0 + (-g[i]).exp());
            assert!(close(y[i], g[i] * s * u[i]), "silu_mul at {}", g[i]);
            assert!(close(dg[i], dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s))));
            assert!(close(du[i], dy[i] * g[i] * s));
        }
    }
}
