//! Which samples enter the RSPO loss.
//!
//! `best_worst` (the default, as the official SPPO/RSPO code) keeps, per prompt, the sample with
//! the highest and the one with the lowest win rate; ties go to the lowest `sample_idx` for both.
//! When all win rates of a prompt tie (or K = 1) the same sample is selected twice, exactly as
//! the official code's argmax/argmin pair does. `all` keeps every sample.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The sample selection rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    BestWorst,
    All,
}

/// One scored sample, as read from `winrates.parquet`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored<'a> {
    pub prompt_id: &'a str,
    pub sample_idx: u32,
    pub winrate: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionError {
    #[error("unknown selection `{0}` (expected best_worst or all)")]
    Unknown(String),
    #[error("prompt {prompt_id} sample {sample_idx}: win rate {winrate} is not in [0, 1]")]
    BadWinrate {
        prompt_id: String,
        sample_idx: u32,
        winrate: f64,
    },
    #[error("prompt {prompt_id} sample {sample_idx} appears twice")]
    Duplicate { prompt_id: String, sample_idx: u32 },
}

impl Selection {
    pub fn name(&self) -> &'static str {
        match self {
            Selection::BestWorst => "best_worst",
            Selection::All => "all",
        }
    }

    /// Indices into `samples` of the selected samples. Prompts come in the order of their first
    /// appearance; `best_worst` gives `[best, worst]` per prompt, `all` gives every index in input
    /// order. Samples of one prompt need not be contiguous.
    pub fn select(&self, samples: &[Scored<'_>]) -> Result<Vec<usize>, SelectionError> {
        // Group by prompt, keeping first-appearance order, and check the input on the way.
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            if !(0.0..=1.0).contains(&s.winrate) {
                return Err(SelectionError::BadWinrate {
                    prompt_id: s.prompt_id.to_string(),
                    sample_idx: s.sample_idx,
                    winrate: s.winrate,
                });
            }
            let g = *group_of.entry(s.prompt_id).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            if groups[g]
                .iter()
                .any(|&j| samples[j].sample_idx == s.sample_idx)
            {
                return Err(SelectionError::Duplicate {
                    prompt_id: s.prompt_id.to_string(),
                    sample_idx: s.sample_idx,
                });
            }
            groups[g].push(i);
        }
        match self {
            Selection::All => Ok((0..samples.len()).collect()),
            Selection::BestWorst => Ok(groups
                .iter()
                .flat_map(|group| {
                    // Order: by win rate, then prefer the lower sample_idx.
                    let best = group.iter().copied().reduce(|a, b| {
                        let (sa, sb) = (&samples[a], &samples[b]);
                        if sb.winrate > sa.winrate
                            || (sb.winrate == sa.winrate && sb.sample_idx < sa.sample_idx)
                        {
                            b
                        } else {
                            a
                        }
                    });
                    let worst = group.iter().copied().reduce(|a, b| {
                        let (sa, sb) = (&samples[a], &samples[b]);
                        if sb.winrate < sa.winrate
                            || (sb.winrate == sa.winrate && sb.sample_idx < sa.sample_idx)
                        {
                            b
                        } else {
                            a
                        }
                    });
                    best.into_iter().chain(worst)
                })
                .collect()),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Selection {
    type Err = SelectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "best_worst" => Ok(Selection::BestWorst),
            "all" => Ok(Selection::All),
            other => Err(SelectionError::Unknown(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(prompt_id: &str, sample_idx: u32, winrate: f64) -> Scored<'_> {
        Scored {
            prompt_id,
            sample_idx,
            winrate,
        }
    }

    #[test]
    fn best_worst_per_prompt() {
        let samples = [
            scored("a", 0, 0.2),
            scored("b", 0, 0.9),
            scored("a", 1, 0.7),
            scored("b", 1, 0.1),
            scored("a", 2, 0.5),
            scored("b", 2, 0.5),
        ];
        assert_eq!(
            Selection::BestWorst.select(&samples).unwrap(),
            vec![2, 0, 1, 3]
        );
        assert_eq!(
            Selection::All.select(&samples).unwrap(),
            vec![0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn ties_go_to_the_lowest_sample_idx_for_both() {
        // Input order deliberately not sorted by sample_idx.
        let samples = [
            scored("p", 3, 0.8),
            scored("p", 1, 0.8),
            scored("p", 2, 0.1),
            scored("p", 0, 0.1),
        ];
        assert_eq!(Selection::BestWorst.select(&samples).unwrap(), vec![1, 3]);
        // All tied: the same sample is best and worst, as the official argmax/argmin pair.
        let tied = [
            scored("p", 1, 0.5),
            scored("p", 0, 0.5),
            scored("p", 2, 0.5),
        ];
        assert_eq!(Selection::BestWorst.select(&tied).unwrap(), vec![1, 1]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let dup = [scored("p", 0, 0.5), scored("p", 0, 0.4)];
        assert!(matches!(
            Selection::All.select(&dup),
            Err(SelectionError::Duplicate { sample_idx: 0, .. })
        ));
        let nan = [scored("p", 0, f64::NAN)];
        assert!(matches!(
            Selection::BestWorst.select(&nan),
            Err(SelectionError::BadWinrate { .. })
        ));
        assert!(Selection::BestWorst.select(&[]).unwrap().is_empty());
        assert_eq!("all".parse::<Selection>().unwrap(), Selection::All);
        assert_eq!(
            "best_worst".parse::<Selection>().unwrap(),
            Selection::BestWorst
        );
        assert!("best".parse::<Selection>().is_err());
    }
}
