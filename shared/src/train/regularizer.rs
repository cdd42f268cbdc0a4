//! Regularizer terms of the RSPO loss and their command-line syntax.
//!
//! A regularizer is a term `T` with a coefficient; the loss adds `coef * T` (DESIGN.md,
//! "The RSPO loss"). On the command line one regularizer is written `KIND=COEF[,clip=C]`:
//!
//! ```text
//! reverse_kl=0.5
//! forward_kl_is=0.1,clip=10
//! chi2=0.1,clip=10
//! forward_kl=0.1
//! forward_kl=0.1,norm=padded
//! chisqsm1=0.1,clip=10
//! entropy=0.1
//! reverseklnoent=0.1
//! ```
//!
//! and a whole set is either a preset name (`sppo`, `rspo-paper`) or a list of such specs.
//! In JSON (pipeline configs, the oracle fixture) a regularizer is
//! `{"kind": "forward_kl_is", "coef": 0.1, "clip": 10.0}`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The clip applied to `forward_kl_is`, `chi2` and `chisqsm1` when a spec does not name one: the
/// paper's value.
pub const DEFAULT_CLIP: f64 = 10.0;

/// One regularizer term `T`, as in DESIGN.md. `dref_s = log pi_theta(y_s) - log pi_ref(y_s)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Term {
    /// `2 * mean_s dref_s^2`.
    ReverseKl,
    /// Importance-sampled forward KL: `2 * mean_s exp(min(-dref_s, clip))`.
    ForwardKlIs {
        #[serde(default = "default_clip")]
        clip: f64,
    },
    /// `2 * mean_s exp(min(dref_s, clip))`.
    Chi2 {
        #[serde(default = "default_clip")]
        clip: f64,
    },
    /// `- sum over the response tokens of samples drawn from pi_ref of log pi_theta(token)`,
    /// divided as `norm` says.
    ForwardKl {
        #[serde(default, skip_serializing_if = "ForwardKlNorm::is_tokens")]
        norm: ForwardKlNorm,
    },
    /// The official `sppo_chisqsm1` (its eta 1): `2 * mean_s r_s / (1 + r_s)` with
    /// `r_s = exp(min(dref_s, clip))`.
    Chisqsm1 {
        #[serde(default = "default_clip")]
        clip: f64,
    },
    /// The official `sppo_entropy`: `2 * mean_s (log pi_theta(y_s))^2`.
    Entropy,
    /// The official `sppo_reverseklnoent`: `-2 * mean_s log pi_theta(y_s) * log pi_ref(y_s)`.
    #[serde(rename = "reverseklnoent")]
    ReverseKlNoEnt,
}

/// What the `forward_kl` sum of token log-probs is divided by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardKlNorm {
    /// N, the number of response tokens of the step's reference samples: a mean over real tokens.
    #[default]
    Tokens,
    /// B x (T - 1), the official code's: B reference samples in the step, T - 1 the longest
    /// one's response tokens (the mean over the padded (B, T - 1) tensor, padding zeroed).
    Padded,
}

impl ForwardKlNorm {
    fn is_tokens(&self) -> bool {
        *self == ForwardKlNorm::Tokens
    }

    pub fn name(&self) -> &'static str {
        match self {
            ForwardKlNorm::Tokens => "tokens",
            ForwardKlNorm::Padded => "padded",
        }
    }

    /// The divisor for reference responses of these lengths (in tokens).
    pub fn divisor(&self, response_lens: &[usize]) -> usize {
        match self {
            ForwardKlNorm::Tokens => response_lens.iter().sum(),
            ForwardKlNorm::Padded => {
                response_lens.len() * response_lens.iter().copied().max().unwrap_or(0)
            }
        }
    }
}

impl FromStr for ForwardKlNorm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim() {
            "tokens" => Ok(ForwardKlNorm::Tokens),
            "padded" => Ok(ForwardKlNorm::Padded),
            _ => Err(()),
        }
    }
}

fn default_clip() -> f64 {
    DEFAULT_CLIP
}

impl Term {
    /// The name used on the command line, in `train_log` columns and in [`super::LossParts::terms`].
    pub fn name(&self) -> &'static str {
        match self {
            Term::ReverseKl => "reverse_kl",
            Term::ForwardKlIs { .. } => "forward_kl_is",
            Term::Chi2 { .. } => "chi2",
            Term::ForwardKl { .. } => "forward_kl",
            Term::Chisqsm1 { .. } => "chisqsm1",
            Term::Entropy => "entropy",
            Term::ReverseKlNoEnt => "reverseklnoent",
        }
    }

    /// The clip of a clipped term.
    pub fn clip(&self) -> Option<f64> {
        match self {
            Term::ForwardKlIs { clip } | Term::Chi2 { clip } | Term::Chisqsm1 { clip } => {
                Some(*clip)
            }
            Term::ReverseKl | Term::ForwardKl { .. } | Term::Entropy | Term::ReverseKlNoEnt => None,
        }
    }

    /// Whether the term needs the token log-probs of reference samples under pi_theta.
    pub fn needs_reference_samples(&self) -> bool {
        matches!(self, Term::ForwardKl { .. })
    }
}

/// A term with its coefficient: the loss adds `coef * T`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Regularizer {
    #[serde(flatten)]
    pub term: Term,
    pub coef: f64,
}

/// Why a regularizer spec or set was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegularizerError {
    #[error("regularizer `{spec}`: expected KIND=COEF[,clip=C], e.g. `forward_kl_is=0.1,clip=10`")]
    Syntax { spec: String },
    #[error(
        "regularizer `{spec}`: unknown kind `{kind}` (expected reverse_kl, forward_kl_is, chi2, \
         forward_kl, chisqsm1, entropy or reverseklnoent)"
    )]
    UnknownKind { spec: String, kind: String },
    #[error("regularizer `{spec}`: {what} `{value}` is not a number")]
    NotANumber {
        spec: String,
        what: &'static str,
        value: String,
    },
    #[error("regularizer `{spec}`: coefficient {coef} must be finite and >= 0")]
    BadCoef { spec: String, coef: f64 },
    #[error("regularizer `{spec}`: clip {clip} must be a number (inf disables clipping)")]
    BadClip { spec: String, clip: f64 },
    #[error(
        "regularizer `{spec}`: {kind} takes no clip (only forward_kl_is, chi2 and chisqsm1 do)"
    )]
    UnexpectedClip { spec: String, kind: &'static str },
    #[error("regularizer `{spec}`: {kind} takes no norm (only forward_kl does)")]
    UnexpectedNorm { spec: String, kind: &'static str },
    #[error("regularizer `{spec}`: norm `{value}`: expected tokens or padded")]
    BadNorm { spec: String, value: String },
    #[error(
        "regularizer `{spec}`: unknown option `{option}` (the options are clip=C and, for \
         forward_kl, norm=tokens|padded)"
    )]
    UnknownOption { spec: String, option: String },
    #[error("regularizer `{spec}`: {option} is given twice")]
    RepeatedOption { spec: String, option: &'static str },
    #[error("regularizer {kind} is given twice; give each kind at most once")]
    Duplicate { kind: &'static str },
    #[error("unknown regularizer preset `{name}` (expected sppo or rspo-paper)")]
    UnknownPreset { name: String },
}

impl Regularizer {
    pub fn new(term: Term, coef: f64) -> Self {
        Self { term, coef }
    }

    /// Checks the coefficient and clip; values built in code or read from JSON go through this.
    pub fn validate(&self) -> Result<(), RegularizerError> {
        let spec = self.to_string();
        if !(self.coef.is_finite() && self.coef >= 0.0) {
            return Err(RegularizerError::BadCoef {
                spec,
                coef: self.coef,
            });
        }
        if let Some(clip) = self.term.clip() {
            if clip.is_nan() {
                return Err(RegularizerError::BadClip { spec, clip });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Regularizer {
    /// The command-line spec, which [`Regularizer::from_str`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.term.name(), self.coef)?;
        if let Some(clip) = self.term.clip() {
            write!(f, ",clip={clip}")?;
        }
        if let Term::ForwardKl { norm } = self.term {
            if !norm.is_tokens() {
                write!(f, ",norm={}", norm.name())?;
            }
        }
        Ok(())
    }
}

fn parse_number(spec: &str, what: &'static str, value: &str) -> Result<f64, RegularizerError> {
    value
        .trim()
        .parse::<f64>()
        .map_err(|_| RegularizerError::NotANumber {
            spec: spec.to_string(),
            what,
            value: value.to_string(),
        })
}

impl FromStr for Regularizer {
    type Err = RegularizerError;

    /// Parses `KIND=COEF[,clip=C][,norm=N]`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax = || RegularizerError::Syntax {
            spec: spec.to_string(),
        };
        let mut parts = spec.trim().split(',');
        let head = parts.next().ok_or_else(syntax)?;
        let (kind, coef) = head.split_once('=').ok_or_else(syntax)?;
        let kind = kind.trim();
        let coef = parse_number(spec, "coefficient", coef)?;
        let (mut clip, mut norm) = (None, None);
        for option in parts {
            let (key, value) = option.split_once('=').ok_or_else(syntax)?;
            let repeated = |option| RegularizerError::RepeatedOption {
                spec: spec.to_string(),
                option,
            };
            match key.trim() {
                "clip" if clip.is_some() => return Err(repeated("clip")),
                "clip" => clip = Some(parse_number(spec, "clip", value)?),
                "norm" if norm.is_some() => return Err(repeated("norm")),
                "norm" => {
                    norm = Some(value.parse::<ForwardKlNorm>().map_err(|()| {
                        RegularizerError::BadNorm {
                            spec: spec.to_string(),
                            value: value.to_string(),
                        }
                    })?)
                }
                _ => {
                    return Err(RegularizerError::UnknownOption {
                        spec: spec.to_string(),
                        option: option.to_string(),
                    })
                }
            }
        }
        let term = match kind {
            "reverse_kl" => Term::ReverseKl,
            "forward_kl" => Term::ForwardKl {
                norm: norm.unwrap_or_default(),
            },
            "forward_kl_is" => Term::ForwardKlIs {
                clip: clip.unwrap_or(DEFAULT_CLIP),
            },
            "chi2" => Term::Chi2 {
                clip: clip.unwrap_or(DEFAULT_CLIP),
            },
            "chisqsm1" => Term::Chisqsm1 {
                clip: clip.unwrap_or(DEFAULT_CLIP),
            },
            "entropy" => Term::Entropy,
            "reverseklnoent" => Term::ReverseKlNoEnt,
            _ => {
                return Err(RegularizerError::UnknownKind {
                    spec: spec.to_string(),
                    kind: kind.to_string(),
                })
            }
        };
        if clip.is_some() && term.clip().is_none() {
            return Err(RegularizerError::UnexpectedClip {
                spec: spec.to_string(),
                kind: term.name(),
            });
        }
        if norm.is_some() && !term.needs_reference_samples() {
            return Err(RegularizerError::UnexpectedNorm {
                spec: spec.to_string(),
                kind: term.name(),
            });
        }
        let regularizer = Regularizer { term, coef };
        regularizer.validate().map_err(|e| match e {
            // Report the user's own spelling rather than the normalized one.
            RegularizerError::BadCoef { coef, .. } => RegularizerError::BadCoef {
                spec: spec.to_string(),
                coef,
            },
            RegularizerError::BadClip { clip, .. } => RegularizerError::BadClip {
                spec: spec.to_string(),
                clip,
            },
            other => other,
        })?;
        Ok(regularizer)
    }
}

/// The named regularizer sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Plain SPPO: no regularizer.
    Sppo,
    /// The paper's best setting: 0.1 x forward_kl_is (clip 10) + 0.5 x reverse_kl.
    RspoPaper,
}

impl Preset {
    pub fn regularizers(&self) -> Vec<Regularizer> {
        match self {
            Preset::Sppo => Vec::new(),
            Preset::RspoPaper => vec![
                Regularizer::new(Term::ForwardKlIs { clip: 10.0 }, 0.1),
                Regularizer::new(Term::ReverseKl, 0.5),
            ],
        }
    }
}

impl FromStr for Preset {
    type Err = RegularizerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "sppo" => Ok(Preset::Sppo),
            "rspo-paper" => Ok(Preset::RspoPaper),
            _ => Err(RegularizerError::UnknownPreset {
                name: name.to_string(),
            }),
        }
    }
}

/// Rejects a set that names a kind twice (each kind is one `train_log` column).
pub fn check_distinct(regularizers: &[Regularizer]) -> Result<(), RegularizerError> {
    for (i, r) in regularizers.iter().enumerate() {
        if regularizers[..i]
            .iter()
            .any(|other| other.term.name() == r.term.name())
        {
            return Err(RegularizerError::Duplicate {
                kind: r.term.name(),
            });
        }
    }
    Ok(())
}

/// Parses a regularizer set from command-line values: either one preset name (`sppo`,
/// `rspo-paper`) or any number of `KIND=COEF[,clip=C]` specs (an empty list is `sppo`).
pub fn parse_regularizers<S: AsRef<str>>(
    specs: &[S],
) -> Result<Vec<Regularizer>, RegularizerError> {
    if let [single] = specs {
        let single = single.as_ref();
        if !single.contains('=') {
            return Ok(single.parse::<Preset>()?.regularizers());
        }
    }
    let regularizers = specs
        .iter()
        .map(|s| s.as_ref().parse::<Regularizer>())
        .collect::<Result<Vec<_>, _>>()?;
    check_distinct(&regularizers)?;
    Ok(regularizers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        let r: Regularizer = "forward_kl_is=0.1,clip=10".parse().unwrap();
        assert_eq!(r, Regularizer::new(Term::ForwardKlIs { clip: 10.0 }, 0.1));
        let r: Regularizer = "chi2=0.25,clip=3.5".parse().unwrap();
        assert_eq!(r, Regularizer::new(Term::Chi2 { clip: 3.5 }, 0.25));
        let r: Regularizer = "reverse_kl=0.5".parse().unwrap();
        assert_eq!(r, Regularizer::new(Term::ReverseKl, 0.5));
        let r: Regularizer = " forward_kl = 1e-2 ".parse().unwrap();
        assert_eq!(
            r,
            Regularizer::new(
                Term::ForwardKl {
                    norm: ForwardKlNorm::Tokens
                },
                0.01
            )
        );
        // Clip defaults to the paper's 10; inf disables clipping.
        let r: Regularizer = "chi2=0.1".parse().unwrap();
        assert_eq!(r.term, Term::Chi2 { clip: DEFAULT_CLIP });
        let r: Regularizer = "forward_kl_is=0.1,clip=inf".parse().unwrap();
        assert_eq!(r.term.clip(), Some(f64::INFINITY));
    }

    #[test]
    fn parses_the_official_terms_and_the_forward_kl_norm() {
        let r: Regularizer = "chisqsm1=0.1".parse().unwrap();
        assert_eq!(
            r,
            Regularizer::new(Term::Chisqsm1 { clip: DEFAULT_CLIP }, 0.1)
        );
        let r: Regularizer = "entropy=0.01".parse().unwrap();
        assert_eq!(r, Regularizer::new(Term::Entropy, 0.01));
        let r: Regularizer = "reverseklnoent=0.5".parse().unwrap();
        assert_eq!(r, Regularizer::new(Term::ReverseKlNoEnt, 0.5));
        let padded = Term::ForwardKl {
            norm: ForwardKlNorm::Padded,
        };
        let r: Regularizer = "forward_kl=0.1,norm=padded".parse().unwrap();
        assert_eq!(r, Regularizer::new(padded, 0.1));
        for spec in [
            "chisqsm1=0.1,clip=5",
            "forward_kl=0.1,norm=padded",
            "entropy=2",
        ] {
            assert_eq!(spec.parse::<Regularizer>().unwrap().to_string(), spec);
        }
        let err = |s: &str| s.parse::<Regularizer>().unwrap_err();
        assert!(matches!(
            err("entropy=0.1,norm=padded"),
            RegularizerError::UnexpectedNorm { .. }
        ));
        assert!(matches!(
            err("forward_kl=0.1,norm=mean"),
            RegularizerError::BadNorm { .. }
        ));
        assert!(matches!(
            err("entropy=0.1,clip=3"),
            RegularizerError::UnexpectedClip { .. }
        ));
        // JSON: the default norm is left out, so earlier fingerprints stay as they were.
        let tokens = Regularizer::new(
            Term::ForwardKl {
                norm: ForwardKlNorm::Tokens,
            },
            0.1,
        );
        assert_eq!(
            serde_json::to_string(&tokens).unwrap(),
            r#"{"kind":"forward_kl","coef":0.1}"#
        );
        let json = serde_json::to_string(&Regularizer::new(padded, 0.1)).unwrap();
        assert_eq!(json, r#"{"kind":"forward_kl","norm":"padded","coef":0.1}"#);
        let back: Regularizer = serde_json::from_str(&json).unwrap();
        assert_eq!(back.term, padded);
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "forward_kl_is=0.1,clip=10",
            "reverse_kl=0.5",
            "chi2=2,clip=0.5",
            "forward_kl=0.1",
        ] {
            let r: Regularizer = spec.parse().unwrap();
            assert_eq!(r.to_string(), spec);
            assert_eq!(r.to_string().parse::<Regularizer>().unwrap(), r);
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = |s: &str| s.parse::<Regularizer>().unwrap_err();
        assert!(matches!(err("reverse_kl"), RegularizerError::Syntax { .. }));
        assert!(
            matches!(err("kl=0.1"), RegularizerError::UnknownKind { kind, .. } if kind == "kl")
        );
        assert!(matches!(
            err("reverse_kl=abc"),
            RegularizerError::NotANumber {
                what: "coefficient",
                ..
            }
        ));
        assert!(matches!(
            err("chi2=0.1,clip=x"),
            RegularizerError::NotANumber { what: "clip", .. }
        ));
        assert!(matches!(
            err("reverse_kl=-1"),
            RegularizerError::BadCoef { .. }
        ));
        assert!(matches!(
            err("reverse_kl=nan"),
            RegularizerError::BadCoef { .. }
        ));
        assert!(matches!(
            err("chi2=1,clip=nan"),
            RegularizerError::BadClip { .. }
        ));
        assert!(matches!(
            err("reverse_kl=0.5,clip=10"),
            RegularizerError::UnexpectedClip {
                kind: "reverse_kl",
                ..
            }
        ));
        assert!(matches!(
            err("chi2=0.5,scale=10"),
            RegularizerError::UnknownOption { .. }
        ));
        assert!(matches!(
            err("chi2=0.5,clip=1,clip=2"),
            RegularizerError::RepeatedOption { option: "clip", .. }
        ));
        let msg = err("forward_kl_is=0.1,clip").to_string();
        assert!(
            msg.contains("forward_kl_is=0.1,clip") && msg.contains("KIND=COEF"),
            "{msg}"
        );
    }

    #[test]
    fn presets_and_sets() {
        assert!(parse_regularizers(&["sppo"]).unwrap().is_empty());
        assert!(parse_regularizers::<&str>(&[]).unwrap().is_empty());
        let paper = parse_regularizers(&["rspo-paper"]).unwrap();
        assert_eq!(
            paper,
            vec![
                Regularizer::new(Term::ForwardKlIs { clip: 10.0 }, 0.1),
                Regularizer::new(Term::ReverseKl, 0.5),
            ]
        );
        let explicit =
            parse_regularizers(&["forward_kl_is=0.1,clip=10", "reverse_kl=0.5"]).unwrap();
        assert_eq!(explicit, paper);
        assert!(matches!(
            parse_regularizers(&["rspo"]),
            Err(RegularizerError::UnknownPreset { .. })
        ));
        assert!(matches!(
            parse_regularizers(&["reverse_kl=0.5", "reverse_kl=0.1"]),
            Err(RegularizerError::Duplicate { kind: "reverse_kl" })
        ));
    }

    #[test]
    fn json_layout_matches_the_fixture() {
        let r: Regularizer =
            serde_json::from_str(r#"{"kind": "forward_kl_is", "coef": 0.1, "clip": 10.0}"#)
                .unwrap();
        assert_eq!(r, Regularizer::new(Term::ForwardKlIs { clip: 10.0 }, 0.1));
        let r: Regularizer =
            serde_json::from_str(r#"{"kind": "reverse_kl", "coef": 0.5}"#).unwrap();
        assert_eq!(r, Regularizer::new(Term::ReverseKl, 0.5));
        let back: Regularizer = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
