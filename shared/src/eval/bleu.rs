//! Sentence BLEU exactly as NLTK's `sentence_bleu` computes it with uniform weights and
//! `SmoothingFunction().method1`, so self-BLEU numbers compare with published ones.

use std::collections::HashMap;
use std::hash::Hash;

/// What NLTK's smoothing method 1 adds to an n-gram order with no match.
const METHOD1_EPSILON: f64 = 0.1;

/// BLEU of `hypothesis` against `references` with n-grams up to `max_n`, weights `1 / max_n`.
///
/// NLTK's details kept: clipped counts against the per-n-gram maximum over references; a zero
/// unigram match gives 0 before smoothing; method 1 adds 0.1 to a zero numerator over the
/// *unreduced* denominator (the hypothesis's n-gram count, at least 1); the brevity penalty uses
/// the reference length closest to the hypothesis length, the shorter one on a tie.
/// `None` without references or with `max_n == 0`.
pub fn sentence_bleu<T: Eq + Hash>(
    hypothesis: &[T],
    references: &[&[T]],
    max_n: usize,
) -> Option<f64> {
    if references.is_empty() || max_n == 0 {
        return None;
    }
    let precisions: Vec<(usize, usize)> = (1..=max_n)
        .map(|n| modified_precision(hypothesis, references, n))
        .collect();
    if precisions[0].0 == 0 {
        return Some(0.0);
    }

    let hyp_len = hypothesis.len();
    let closest_ref_len = references
        .iter()
        .map(|r| r.len())
        .min_by_key(|&r| (r.abs_diff(hyp_len), r))?;
    let brevity_penalty = if hyp_len > closest_ref_len {
        1.0
    } else {
        (1.0 - closest_ref_len as f64 / hyp_len as f64).exp()
    };

    let weight = 1.0 / max_n as f64;
    let log_sum: f64 = precisions
        .iter()
        .map(|&(numerator, denominator)| {
            let p = if numerator == 0 {
                METHOD1_EPSILON / denominator as f64
            } else {
                numerator as f64 / denominator as f64
            };
            weight * p.ln()
        })
        .sum();
    Some(brevity_penalty * log_sum.exp())
}

/// (clipped matches, max(1, hypothesis n-grams)) for one n-gram order.
fn modified_precision<T: Eq + Hash>(
    hypothesis: &[T],
    references: &[&[T]],
    n: usize,
) -> (usize, usize) {
    let counts = ngram_counts(hypothesis, n);
    let mut max_ref_counts: HashMap<&[T], usize> = HashMap::new();
    for reference in references {
        let ref_counts = ngram_counts(reference, n);
        for gram in counts.keys() {
            let c = ref_counts.get(gram).copied().unwrap_or(0);
            let best = max_ref_counts.entry(gram).or_insert(0);
            *best = (*best).max(c);
        }
    }
    let clipped: usize = counts
        .iter()
        .map(|(gram, &c)| c.min(max_ref_counts.get(gram).copied().unwrap_or(0)))
        .sum();
    let total: usize = counts.values().sum();
    (clipped, total.max(1))
}

fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn identical_sentences_score_one() {
        let h = words("same text here");
        assert_eq!(sentence_bleu(&h, &[&h[..]], 3), Some(1.0));
    }

    #[test]
    fn hand_computed_with_smoothing_and_brevity_penalty() {
        // hyp "a b c d", ref "a b x d e" (len 5): unigrams 3/4, bigrams 1/3 ("a b"), trigrams 0/2
        // -> method 1: 0.1/2 = 0.05. BP = exp(1 - 5/4).
        // BLEU = exp(1 - 5/4) * (0.75 * 1/3 * 0.05)^(1/3) = exp(-0.25) * 0.0125^(1/3).
        let h = words("a b c d");
        let r = words("a b x d e");
        let expected = (-0.25f64).exp() * 0.0125f64.powf(1.0 / 3.0);
        let got = sentence_bleu(&h, &[&r[..]], 3).unwrap();
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
    }

    #[test]
    fn clipping_uses_the_best_reference_per_ngram_and_closest_length() {
        // hyp "the the the" vs refs "the cat" and "the the dog": "the" clipped to 2 -> 2/3;
        // bigram "the the" 1 of 2; trigram 0 of 1 -> 0.1. Ref lengths 2 and 3: closest is 3 = hyp,
        // so BP = exp(1 - 3/3) = 1. BLEU = (2/3 * 1/2 * 0.1)^(1/3).
        let h = words("the the the");
        let r1 = words("the cat");
        let r2 = words("the the dog");
        let expected = (1.0f64 / 30.0).powf(1.0 / 3.0);
        let got = sentence_bleu(&h, &[&r1[..], &r2[..]], 3).unwrap();
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
    }

    #[test]
    fn equally_close_references_take_the_shorter_length() {
        // hyp length 4, refs of length 3 and 5: NLTK takes 3, so BP = 1 and every n-gram matches
        // (a b c / b c d are in the second reference). Taking 5 would give exp(1 - 5/4).
        let h = words("a b c d");
        let r1 = words("a b c");
        let r2 = words("a b c d e");
        assert_eq!(sentence_bleu(&h, &[&r1[..], &r2[..]], 3), Some(1.0));
        assert_eq!(sentence_bleu(&h, &[&r2[..], &r1[..]], 3), Some(1.0));
    }

    #[test]
    fn no_unigram_match_is_zero_and_no_reference_is_none() {
        let h = words("x y");
        let r = words("a b");
        assert_eq!(sentence_bleu(&h, &[&r[..]], 3), Some(0.0));
        assert_eq!(sentence_bleu::<&str>(&[], &[&r[..]], 3), Some(0.0));
        assert_eq!(sentence_bleu(&h, &[], 3), None);
    }
}
