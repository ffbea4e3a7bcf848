//! Inclusion probabilities of `k` distinct draws made without replacement (successive
//! sampling) from a distribution `q` over the allowed items.
//!
//! Equal weights give `k / n` exactly. Unequal ones have no closed form; the Poisson
//! (successive-sampling) approximation `pi_i = 1 - exp(-lambda q_i)`, `lambda` such that the
//! `pi_i` sum to `k`, is close to it (Rosén 1997): `lambda` plays the role of the number of
//! draws with replacement that it takes to see `k` distinct items. Items of equal `q` share
//! their `pi`, so the solve runs over classes of equal `q` with their multiplicities.

/// Newton steps at most; from below, on a concave function, a few suffice.
const MAX_STEPS: usize = 200;

/// `lambda` with `sum_c m_c (1 - exp(-lambda q_c)) = k` over `classes` of `(m_c, q_c)`:
/// `m_c > 0` items of probability `q_c > 0` each, `sum_c m_c q_c = 1`. Infinite when `k`
/// is at least the number of items (every item is drawn), 0 when `k <= 0`.
pub fn poisson_lambda(k: f64, classes: &[(f64, f64)]) -> f64 {
    let n: f64 = classes.iter().map(|&(m, _)| m).sum();
    if k >= n {
        return f64::INFINITY;
    }
    if k <= 0.0 {
        return 0.0;
    }
    // f(lambda) = sum m (1 - exp(-lambda q)) - k is increasing and concave, and f(k) <= 0
    // (1 - exp(-x) <= x): Newton from k climbs to the root without overshooting.
    let mut lambda = k;
    for _ in 0..MAX_STEPS {
        let (mut f, mut slope) = (-k, 0.0);
        for &(m, q) in classes {
            let e = (-lambda * q).exp_m1(); // exp(-lambda q) - 1, accurate for small lambda q
            f -= m * e;
            slope += m * q * (1.0 + e);
        }
        if f >= -1e-12 * k || slope <= 0.0 {
            break;
        }
        let step = -f / slope;
        lambda += step;
        if step <= 1e-15 * lambda {
            break;
        }
    }
    lambda
}

/// `ln pi` of an item of probability `q` for the `lambda` of [`poisson_lambda`].
#[inline]
pub fn log_inclusion(lambda: f64, q: f64) -> f64 {
    (-(-lambda * q).exp_m1()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_k_and_grow_with_q() {
        // 3 items of q = 0.2, 10 of q = 0.03, 20 of q = 0.005.
        let classes = [(3.0, 0.2), (10.0, 0.03), (20.0, 0.005)];
        for k in [1.0, 5.0, 17.0, 32.0] {
            let lambda = poisson_lambda(k, &classes);
            let pis: Vec<f64> = classes.iter().map(|&(_, q)| log_inclusion(lambda, q).exp()).collect();
            let total: f64 = classes.iter().zip(&pis).map(|(&(m, _), pi)| m * pi).sum();
            assert!((total - k).abs() < 1e-9 * k, "k = {k}: sum {total}");
            assert!(pis[0] > pis[1] && pis[1] > pis[2] && pis[0] <= 1.0);
        }
        // Equal weights: exactly k / n.
        let lambda = poisson_lambda(4.0, &[(10.0, 0.1)]);
        assert!((log_inclusion(lambda, 0.1) - 0.4f64.ln()).abs() < 1e-12);
        // All items drawn, or none.
        assert_eq!(log_inclusion(poisson_lambda(33.0, &classes), 0.005), 0.0);
        assert_eq!(poisson_lambda(0.0, &classes), 0.0);
    }

    #[test]
    fn converges_on_a_very_skewed_distribution() {
        let classes = [(1.0, 1.0 - 1e-6), (1000.0, 1e-9)];
        let lambda = poisson_lambda(500.0, &classes);
        let total: f64 = classes.iter().map(|&(m, q)| m * log_inclusion(lambda, q).exp()).sum();
        assert!((total - 500.0).abs() < 1e-6, "{total}");
    }
}
