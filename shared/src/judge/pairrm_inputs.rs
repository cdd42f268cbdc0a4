//! PairRM's inputs, built as the PairRM-hf model card's `tokenize_pair` builds them.
//!
//! One input is three segments, each encoded on its own with the tokenizer's template (DeBERTa-v3:
//! `[CLS] .. [SEP]`; the tiny fixture's Llama tokenizer: `<s> ..`) and truncated on its own:
//!
//! ```text
//! source_ids = encode("<|source|>" + source,         max_length = source_max_length)
//! cand_max   = (source_max_length + 2 * candidate_max_length - len(source_ids)) // 2
//! cand1_ids  = encode("<|candidate1|>" + candidate1, max_length = cand_max)
//! cand2_ids  = encode("<|candidate2|>" + candidate2, max_length = cand_max)
//! ids        = source_ids + cand1_ids + cand2_ids
//! ```
//!
//! so a short source leaves its unused room to the candidates. Truncation is transformers'
//! `truncation=True` on one sequence: the text's tokens are cut from the right to leave room for
//! the template's special tokens, which are then added. The card pads every row to the total
//! maximum, and llm-blender's forward drops the columns that are padding in every row, so padding
//! to the longest row of a batch gives the same numbers.

use std::path::{Path, PathBuf};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use super::pairrm::PairRmError;

/// The prefix tokens llm-blender added to the tokenizer, one per segment.
pub const SOURCE_PREFIX: &str = "<|source|>";
pub const CAND1_PREFIX: &str = "<|candidate1|>";
pub const CAND2_PREFIX: &str = "<|candidate2|>";

/// `tokenize_pair`'s two limits; the defaults are PairRM's (1224 + 2 x 412 = 2048 tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PairRmLengths {
    pub source_max_length: usize,
    pub candidate_max_length: usize,
}

impl Default for PairRmLengths {
    fn default() -> Self {
        PairRmLengths {
            source_max_length: 1224,
            candidate_max_length: 412,
        }
    }
}

impl PairRmLengths {
    /// The longest input: `source_max_length + 2 * candidate_max_length`.
    pub fn total_max_length(&self) -> usize {
        self.source_max_length + 2 * self.candidate_max_length
    }
}

/// The ids of the three prefix tokens, as config.json gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixIds {
    pub source: u32,
    pub cand1: u32,
    pub cand2: u32,
}

/// One (source, candidate 1, candidate 2) input and where its prefix tokens sit: the model reads
/// the encoder's hidden states at those three positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInput {
    pub ids: Vec<u32>,
    pub source_pos: usize,
    pub cand1_pos: usize,
    pub cand2_pos: usize,
}

/// One encoded segment: its ids and the position of its prefix token.
#[derive(Debug, Clone)]
struct Segment {
    ids: Vec<u32>,
    prefix_pos: usize,
}

/// A PairRM tokenizer: the checkpoint's `tokenizer.json` plus the prefix tokens and the limits.
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    prefix_ids: PrefixIds,
    lengths: PairRmLengths,
    /// How many special tokens the template adds to one sequence (DeBERTa-v3: 2, Llama: 1).
    n_special: usize,
}

impl PairTokenizer {
    /// Reads `tokenizer.json` and checks that it has the three prefix tokens with the config's ids.
    pub fn from_file(
        path: &Path,
        prefix_ids: PrefixIds,
        lengths: PairRmLengths,
    ) -> Result<Self, PairRmError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| PairRmError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::new(tokenizer, path, prefix_ids, lengths)
    }

    /// `path` names the tokenizer in error messages.
    pub fn new(
        mut tokenizer: Tokenizer,
        path: &Path,
        prefix_ids: PrefixIds,
        lengths: PairRmLengths,
    ) -> Result<Self, PairRmError> {
        for (token, key, expected) in [
            (SOURCE_PREFIX, "source_prefix_id", prefix_ids.source),
            (CAND1_PREFIX, "cand1_prefix_id", prefix_ids.cand1),
            (CAND2_PREFIX, "cand2_prefix_id", prefix_ids.cand2),
        ] {
            match tokenizer.token_to_id(token) {
                None => {
                    return Err(PairRmError::TokenizerLacksPrefix {
                        path: path.to_path_buf(),
                        token,
                        key,
                        expected,
                    })
                }
                Some(found) if found != expected => {
                    return Err(PairRmError::PrefixIdMismatch {
                        path: path.to_path_buf(),
                        token,
                        key,
                        found,
                        expected,
                    })
                }
                Some(_) => {}
            }
        }
        // transformers overrides whatever truncation or padding tokenizer.json carries with the
        // call's own; we truncate by hand below and pad in the model.
        tokenizer
            .with_truncation(None)
            .map_err(|e| PairRmError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        let n_special = tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        // Each segment must keep at least its template and its prefix token; the smallest
        // candidate limit occurs when the source fills its whole limit.
        for (flag, value) in [
            ("--source-max-length", lengths.source_max_length),
            ("--candidate-max-length", lengths.candidate_max_length),
        ] {
            if value < n_special + 1 {
                return Err(PairRmError::LengthTooSmall {
                    flag,
                    value,
                    min: n_special + 1,
                });
            }
        }
        Ok(PairTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            prefix_ids,
            lengths,
            n_special,
        })
    }

    pub fn lengths(&self) -> PairRmLengths {
        self.lengths
    }

    pub fn prefix_ids(&self) -> PrefixIds {
        self.prefix_ids
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `tokenizer.encode(prefix + text, max_length=max_length, truncation=True)`.
    fn segment(
        &self,
        prefix: &str,
        prefix_id: u32,
        text: &str,
        max_length: usize,
    ) -> Result<Segment, PairRmError> {
        let err = |e: tokenizers::Error| PairRmError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut encoding = self
            .tokenizer
            .encode(format!("{prefix}{text}"), false)
            .map_err(err)?;
        encoding.truncate(max_length - self.n_special, 0, TruncationDirection::Right);
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(err)?;
        let ids = encoding.get_ids().to_vec();
        // The prefix is the text's first token; the template's own special tokens come before it.
        let prefix_pos =
            ids.iter()
                .position(|&t| t == prefix_id)
                .ok_or_else(|| PairRmError::Tokenizer {
                    path: self.path.clone(),
                    message: format!(
                        "encoding {prefix:?} + text lost the token {prefix} (id {prefix_id})"
                    ),
                })?;
        Ok(Segment { ids, prefix_pos })
    }

    fn source(&self, source: &str) -> Result<Segment, PairRmError> {
        self.segment(
            SOURCE_PREFIX,
            self.prefix_ids.source,
            source,
            self.lengths.source_max_length,
        )
    }

    /// The candidates' limit given the source's length: the source's unused room is shared.
    fn candidate_max_length(&self, source_len: usize) -> usize {
        (self.lengths.total_max_length() - source_len) / 2
    }

    fn join(source: &Segment, cand1: &Segment, cand2: &Segment) -> PairInput {
        let (s, c1) = (source.ids.len(), cand1.ids.len());
        let mut ids = Vec::with_capacity(s + c1 + cand2.ids.len());
        ids.extend_from_slice(&source.ids);
        ids.extend_from_slice(&cand1.ids);
        ids.extend_from_slice(&cand2.ids);
        PairInput {
            ids,
            source_pos: source.prefix_pos,
            cand1_pos: s + cand1.prefix_pos,
            cand2_pos: s + c1 + cand2.prefix_pos,
        }
    }

    /// The input comparing `cand1` (shown first) with `cand2` on `source`.
    pub fn encode_pair(
        &self,
        source: &str,
        cand1: &str,
        cand2: &str,
    ) -> Result<PairInput, PairRmError> {
        let source = self.source(source)?;
        let max = self.candidate_max_length(source.ids.len());
        let c1 = self.segment(CAND1_PREFIX, self.prefix_ids.cand1, cand1, max)?;
        let c2 = self.segment(CAND2_PREFIX, self.prefix_ids.cand2, cand2, max)?;
        Ok(Self::join(&source, &c1, &c2))
    }

    /// Every ordered pair (i, j), i != j, of one source's responses, row by row: (0, 1), (0, 2), ..,
    /// (1, 0), (1, 2), ... The source is encoded once and each response once per position.
    pub fn encode_group(
        &self,
        source: &str,
        responses: &[&str],
    ) -> Result<Vec<PairInput>, PairRmError> {
        let source = self.source(source)?;
        let max = self.candidate_max_length(source.ids.len());
        let as_cand1 = responses
            .iter()
            .map(|r| self.segment(CAND1_PREFIX, self.prefix_ids.cand1, r, max))
            .collect::<Result<Vec<_>, _>>()?;
        let as_cand2 = responses
            .iter()
            .map(|r| self.segment(CAND2_PREFIX, self.prefix_ids.cand2, r, max))
            .collect::<Result<Vec<_>, _>>()?;
        let k = responses.len();
        let mut out = Vec::with_capacity(k * k.saturating_sub(1));
        for (i, c1) in as_cand1.iter().enumerate() {
            for (j, c2) in as_cand2.iter().enumerate() {
                if i != j {
                    out.push(Self::join(&source, c1, c2));
                }
            }
        }
        Ok(out)
    }
}
