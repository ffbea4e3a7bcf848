//! Evaluation splits (docs/design.md, "Splits"): per session `train_end`, `valid_target`, `test_target`.

use rayon::prelude::*;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitRule {
    /// Test target = last kept play (index >= 1); validation target = the last kept play before it.
    LeaveLastOut,
    /// Sessions ordered by first timestamp (file order without times); the last `test_fraction`
    /// get a test target, the `valid_fraction` before them a validation target.
    Temporal { valid_fraction: f64, test_fraction: f64 },
}

impl SplitRule {
    pub fn validate(&self) -> Result<()> {
        if let SplitRule::Temporal { valid_fraction: v, test_fraction: t } = *self {
            if !(0.0..=1.0).contains(&v) || !(0.0..=1.0).contains(&t) || v + t > 1.0 {
                return Err(Error::Config(format!(
                    "valid_fraction and test_fraction must be in [0, 1] with a sum <= 1, got {v} and {t}"
                )));
            }
        }
        Ok(())
    }
}

pub struct Targets {
    pub train_end: Vec<i32>,
    pub valid_target: Vec<i32>,
    pub test_target: Vec<i32>,
}

/// Last kept (non-skipped) position in `[1, before)`, or -1.
pub(crate) fn last_kept(skips: &[u8], before: usize) -> i32 {
    (1..before.min(skips.len())).rev().find(|&i| skips[i] == 0).map_or(-1, |i| i as i32)
}

pub fn compute(rule: SplitRule, offsets: &[i64], skips: &[u8], times: Option<&[i64]>) -> Targets {
    let n = offsets.len().saturating_sub(1);
    let session = |s: usize| &skips[offsets[s] as usize..offsets[s + 1] as usize];
    let mut out = Targets { train_end: vec![0; n], valid_target: vec![-1; n], test_target: vec![-1; n] };
    match rule {
        SplitRule::LeaveLastOut => {
            (&mut out.train_end, &mut out.valid_target, &mut out.test_target)
                .into_par_iter()
                .enumerate()
                .with_min_len(1 << 12)
                .for_each(|(s, (train_end, valid, test))| {
                    (*train_end, *valid, *test) = leave_last_out(session(s));
                });
        }
        SplitRule::Temporal { valid_fraction, test_fraction } => {
            let first_time = times.map(|times| move |s: usize| times[offsets[s] as usize]);
            temporal(n, valid_fraction, test_fraction, first_time, |s, part| {
                let sk = session(s);
                match part {
                    Part::Test => out.test_target[s] = last_kept(sk, sk.len()),
                    Part::Valid => out.valid_target[s] = last_kept(sk, sk.len()),
                    Part::Train => out.train_end[s] = sk.len() as i32,
                }
            });
        }
    }
    out
}

/// (train_end, valid_target, test_target) of one session under the leave-last-out rule.
#[inline]
pub(crate) fn leave_last_out(skips: &[u8]) -> (i32, i32, i32) {
    let t = last_kept(skips, skips.len());
    let v = if t > 0 { last_kept(skips, t as usize) } else { -1 };
    let train_end = if v >= 0 {
        v
    } else if t >= 0 {
        t
    } else {
        skips.len() as i32
    };
    (train_end, v, t)
}

/// Where a session goes under the temporal rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Train,
    Valid,
    Test,
}

/// The temporal rule over `n` sessions: ordered by `first_time` (stable; file order without
/// times), the last `test_fraction` are test sessions and the `valid_fraction` before them
/// validation sessions. Calls `assign(session, part)` once per session, in time order.
pub(crate) fn temporal(
    n: usize,
    valid_fraction: f64,
    test_fraction: f64,
    first_time: Option<impl Fn(usize) -> i64>,
    mut assign: impl FnMut(usize, Part),
) {
    let mut by_time: Vec<usize> = (0..n).collect();
    if let Some(first_time) = first_time {
        by_time.sort_by_key(|&s| first_time(s));
    }
    let n_test = ((n as f64) * test_fraction).round() as usize;
    let n_valid = (((n as f64) * valid_fraction).round() as usize).min(n - n_test);
    for (rank, &s) in by_time.iter().enumerate() {
        let part = if rank >= n - n_test {
            Part::Test
        } else if rank >= n - n_test - n_valid {
            Part::Valid
        } else {
            Part::Train
        };
        assign(s, part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_last_out_targets_kept_plays() {
        // session 0: kept plays at 0,1,3 (2,4 skipped) -> t=3, v=1, train_end=1
        // session 1: only play 0 kept -> no targets, train on all
        // session 2: kept at 0 and 2 -> t=2, no v, train_end=2
        let offsets = [0, 5, 8, 11];
        let skips = [0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0];
        let t = compute(SplitRule::LeaveLastOut, &offsets, &skips, None);
        assert_eq!(t.test_target, vec![3, -1, 2]);
        assert_eq!(t.valid_target, vec![1, -1, -1]);
        assert_eq!(t.train_end, vec![1, 3, 2]);
    }

    #[test]
    fn temporal_orders_by_first_time() {
        let offsets = [0, 3, 6, 9, 12];
        let skips = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let times = [30, 31, 32, 10, 11, 12, 40, 41, 42, 20, 21, 22];
        let rule = SplitRule::Temporal { valid_fraction: 0.25, test_fraction: 0.25 };
        let t = compute(rule, &offsets, &skips, Some(&times));
        // order by first time: s1 (10), s3 (20), s0 (30), s2 (40)
        assert_eq!(t.test_target, vec![-1, -1, 2, -1]);
        assert_eq!(t.valid_target, vec![1, -1, -1, -1]);
        assert_eq!(t.train_end, vec![0, 3, 0, 3]);
        assert!(SplitRule::Temporal { valid_fraction: 0.6, test_fraction: 0.6 }.validate().is_err());
    }
}
