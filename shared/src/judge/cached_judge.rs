//! A judge with its judgment cache ([`JudgmentCache`]). Asked for the verdicts on a chunk of
//! prompts, it takes what the cache holds, has the judge give each distinct missing judgment
//! once, and checks what the judge returned; `write_back` stores finished verdicts in the cache
//! file. Stages see verdicts, never cache keys or the file's encoding.

use std::collections::HashMap;
use std::path::Path;

use super::cache::{item_key, pair_key, JudgmentCache};
use super::traits::{
    pairs_of, Judge, JudgeError, JudgeItem, PairVerdict, PairwiseJudge, ScalarJudge,
};

/// Verdicts on a chunk of prompts, one entry per prompt in the chunk's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdicts {
    /// A scalar judge's score of each response, in the prompt's sample order.
    Scores(Vec<Vec<f64>>),
    /// A pairwise judge's verdict on each pair i < j, in [`pairs_of`] order.
    Pairs(Vec<Vec<PairVerdict>>),
}

/// The verdicts on a chunk and how they came about.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkVerdicts {
    pub verdicts: Verdicts,
    /// Judgments computed now: responses for a scalar judge, pairs for a pairwise one.
    pub judged: usize,
    /// Judgments not recomputed: taken from the cache, or a response repeated in the chunk.
    pub reused: usize,
    /// Responses the judge looked at.
    pub responses_judged: usize,
}

pub struct CachedJudge {
    judge: Judge,
    /// As opened: lookups during a run do not see what `write_back` adds.
    cache: Option<JudgmentCache>,
}

fn bad_verdict(judge: &str, message: String) -> JudgeError {
    JudgeError::BadVerdict {
        judge: judge.to_string(),
        message,
    }
}

/// A cached pairwise verdict: `[p, p_forward, p_swapped]`, NaN for an absent order.
fn encode_verdict(v: &PairVerdict) -> Vec<f64> {
    vec![
        v.p,
        v.p_forward.unwrap_or(f64::NAN),
        v.p_swapped.unwrap_or(f64::NAN),
    ]
}

fn decode_verdict(values: &[f64]) -> Option<PairVerdict> {
    let [p, f, s] = values else { return None };
    let opt = |x: f64| (!x.is_nan()).then_some(x);
    Some(PairVerdict {
        p: *p,
        p_forward: opt(*f),
        p_swapped: opt(*s),
    })
}

fn check_verdict(
    judge: &str,
    item: &JudgeItem<'_>,
    pair: (usize, usize),
    v: &PairVerdict,
) -> Result<(), JudgeError> {
    let (i, j) = pair;
    for (what, value) in [
        ("p", Some(v.p)),
        ("p_forward", v.p_forward),
        ("p_swapped", v.p_swapped),
    ] {
        if let Some(x) = value.filter(|x| !(0.0..=1.0).contains(x)) {
            return Err(bad_verdict(
                judge,
                format!(
                    "gave prompt {:?}, pair ({i}, {j}) {what} = {x}, expected a probability in [0, 1]",
                    item.prompt_id
                ),
            ));
        }
    }
    Ok(())
}

impl CachedJudge {
    /// `cache_dir` None turns the cache off. A judge whose verdicts depend on the whole group
    /// (see [`PairwiseJudge::per_pair`]) is never cached.
    pub fn open(judge: Judge, cache_dir: Option<&Path>) -> Result<Self, JudgeError> {
        let cache = match cache_dir {
            Some(dir) if judge.cacheable() => Some(JudgmentCache::open(dir, &judge.digest())?),
            _ => None,
        };
        Ok(CachedJudge { judge, cache })
    }

    pub fn judge(&self) -> &Judge {
        &self.judge
    }

    /// The cache file, when the cache is on.
    pub fn cache_path(&self) -> Option<&Path> {
        self.cache.as_ref().map(JudgmentCache::path)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<&[f64]> {
        self.cache.as_ref().and_then(|c| c.get(key))
    }

    /// Checks what the judge will see (a template that raises, a conversation longer than the
    /// judge's context, a missing reference) without judging: the responses a scalar judge has
    /// no cached score for, every prompt of a pairwise judge.
    pub fn check(&self, prompts: &[Vec<JudgeItem<'_>>]) -> Result<(), JudgeError> {
        match &self.judge {
            Judge::Scalar { judge, .. } => {
                let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
                let uncached: Vec<JudgeItem> = prompts
                    .iter()
                    .flatten()
                    .filter(|it| {
                        self.cached(&item_key(&digest, it, uses_reference))
                            .is_none()
                    })
                    .copied()
                    .collect();
                judge.check(&uncached)
            }
            Judge::Pairwise(judge) => prompts.iter().try_for_each(|items| judge.check(items)),
        }
    }

    /// The verdicts on a chunk of prompts (each prompt's responses in sample order).
    pub fn judge_chunk(&self, prompts: &[Vec<JudgeItem<'_>>]) -> Result<ChunkVerdicts, JudgeError> {
        match &self.judge {
            Judge::Scalar { judge, .. } => self.score_chunk(judge.as_ref(), prompts),
            Judge::Pairwise(judge) => self.compare_chunk(judge.as_ref(), prompts),
        }
    }

    /// Scores every response of the chunk at once, each distinct uncached one once (a
    /// prompt's samples often repeat a response).
    fn score_chunk(
        &self,
        judge: &dyn ScalarJudge,
        prompts: &[Vec<JudgeItem<'_>>],
    ) -> Result<ChunkVerdicts, JudgeError> {
        let name = judge.name();
        let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
        let items: Vec<JudgeItem> = prompts.iter().flatten().copied().collect();
        let keys: Vec<[u8; 32]> = items
            .iter()
            .map(|it| item_key(&digest, it, uses_reference))
            .collect();
        let mut values: Vec<Option<f64>> = keys
            .iter()
            .map(|key| self.cached(key).and_then(|v| v.first().copied()))
            .collect();
        let mut first_of: HashMap<[u8; 32], usize> = HashMap::new();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if values[i].is_none() && !first_of.contains_key(key) {
                first_of.insert(*key, i);
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let todo: Vec<JudgeItem> = missing.iter().map(|&i| items[i]).collect();
            let got = judge.score(&todo)?;
            if got.len() != todo.len() {
                let message = format!("returned {} scores for {} responses", got.len(), todo.len());
                return Err(bad_verdict(&name, message));
            }
            for (&i, v) in missing.iter().zip(got) {
                if !v.is_finite() {
                    let message = format!(
                        "gave prompt {:?}, sample {} the score {v}, expected a finite number",
                        items[i].prompt_id, items[i].sample_idx
                    );
                    return Err(bad_verdict(&name, message));
                }
                values[i] = Some(v);
            }
            for i in 0..items.len() {
                if values[i].is_none() {
                    values[i] = first_of.get(&keys[i]).and_then(|&f| values[f]);
                }
            }
        }
        let mut values = values.into_iter().map(|v| v.unwrap_or(f64::NAN));
        let scores = prompts
            .iter()
            .map(|p| values.by_ref().take(p.len()).collect())
            .collect();
        Ok(ChunkVerdicts {
            verdicts: Verdicts::Scores(scores),
            judged: missing.len(),
            reused: items.len() - missing.len(),
            responses_judged: missing.len(),
        })
    }

    /// Compares every pair of each prompt. A prompt is judged as a whole (a judge may look at
    /// all K at once), so it is reused only when every pair is cached.
    fn compare_chunk(
        &self,
        judge: &dyn PairwiseJudge,
        prompts: &[Vec<JudgeItem<'_>>],
    ) -> Result<ChunkVerdicts, JudgeError> {
        let name = judge.name();
        let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
        let (mut judged, mut reused, mut responses_judged) = (0, 0, 0);
        let mut all = Vec::with_capacity(prompts.len());
        for items in prompts {
            let pairs = pairs_of(items.len());
            let cached: Option<Vec<PairVerdict>> = pairs
                .iter()
                .map(|&(i, j)| {
                    let key = pair_key(&digest, &items[i], &items[j], uses_reference);
                    self.cached(&key).and_then(decode_verdict)
                })
                .collect();
            let verdicts = match cached {
                Some(v) => {
                    reused += v.len();
                    v
                }
                None => {
                    let v = judge.compare_group(items)?;
                    if v.len() != pairs.len() {
                        let message =
                            format!("returned {} verdicts for {} pairs", v.len(), pairs.len());
                        return Err(bad_verdict(&name, message));
                    }
                    judged += v.len();
                    responses_judged += items.len();
                    v
                }
            };
            for (&(i, j), v) in pairs.iter().zip(&verdicts) {
                check_verdict(&name, &items[i], (i, j), v)?;
            }
            all.push(verdicts);
        }
        Ok(ChunkVerdicts {
            verdicts: Verdicts::Pairs(all),
            judged,
            reused,
            responses_judged,
        })
    }

    /// Stores finished verdicts (this run's, and an interrupted run's) in the cache file,
    /// merged with what another run may have saved meanwhile. A no-op with the cache off.
    pub fn write_back(
        &mut self,
        prompts: &[Vec<JudgeItem<'_>>],
        verdicts: &Verdicts,
    ) -> Result<(), JudgeError> {
        let CachedJudge { judge, cache } = self;
        let Some(cache) = cache.as_mut() else {
            return Ok(());
        };
        match (&*judge, verdicts) {
            (Judge::Scalar { judge, .. }, Verdicts::Scores(scores)) => {
                let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
                for (items, scores) in prompts.iter().zip(scores) {
                    for (it, &v) in items.iter().zip(scores) {
                        cache.insert(item_key(&digest, it, uses_reference), vec![v]);
                    }
                }
            }
            (Judge::Pairwise(judge), Verdicts::Pairs(verdicts)) => {
                let (digest, uses_reference) = (judge.digest(), judge.uses_reference());
                for (items, verdicts) in prompts.iter().zip(verdicts) {
                    for ((i, j), v) in pairs_of(items.len()).into_iter().zip(verdicts) {
                        let key = pair_key(&digest, &items[i], &items[j], uses_reference);
                        cache.insert(key, encode_verdict(v));
                    }
                }
            }
            (judge, _) => {
                let message = "was handed the other kind of verdicts to cache".to_string();
                return Err(bad_verdict(&judge.name(), message));
            }
        }
        cache.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Message;
    use crate::judge::rules::LengthRule;
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rspo-cached-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// One prompt's items, sample_idx in order.
    fn prompt<'a>(
        id: &'a str,
        messages: &'a [Message],
        responses: &[&'a str],
    ) -> Vec<JudgeItem<'a>> {
        responses
            .iter()
            .enumerate()
            .map(|(i, response)| JudgeItem {
                prompt_id: id,
                sample_idx: i as u32,
                messages,
                prompt_text: "",
                response,
                reference: None,
                constraints: None,
            })
            .collect()
    }

    /// A scalar judge that counts the responses it scores and returns `answer` for them.
    struct Counting {
        scored: Arc<AtomicUsize>,
        answer: fn(&[JudgeItem<'_>]) -> Vec<f64>,
    }

    impl ScalarJudge for Counting {
        fn name(&self) -> String {
            "test:counting".into()
        }
        fn settings(&self) -> Value {
            json!({})
        }
        fn digest(&self) -> String {
            "counting".into()
        }
        fn score(&self, items: &[JudgeItem<'_>]) -> Result<Vec<f64>, JudgeError> {
            self.scored.fetch_add(items.len(), Ordering::Relaxed);
            Ok((self.answer)(items))
        }
    }

    fn counting(answer: fn(&[JudgeItem<'_>]) -> Vec<f64>) -> (Judge, Arc<AtomicUsize>) {
        let scored = Arc::new(AtomicUsize::new(0));
        let judge = Judge::Scalar {
            judge: Box::new(Counting {
                scored: scored.clone(),
                answer,
            }),
            temperature: 1.0,
        };
        (judge, scored)
    }

    fn lengths(items: &[JudgeItem<'_>]) -> Vec<f64> {
        items.iter().map(|it| it.response.len() as f64).collect()
    }

    #[test]
    fn a_scalar_judge_scores_each_distinct_response_once_and_reuses_written_scores() {
        let dir = tmp("scalar");
        let (m1, m2) = ([Message::user("q1")], [Message::user("q2")]);
        // "ab" twice in prompt a; "ab" again in prompt b, another conversation: judged again.
        let chunk = vec![
            prompt("a", &m1, &["ab", "abc", "ab"]),
            prompt("b", &m2, &["ab", "x", "yy"]),
        ];
        let (judge, scored) = counting(lengths);
        let mut cached = CachedJudge::open(judge, Some(&dir)).unwrap();
        let got = cached.judge_chunk(&chunk).unwrap();
        let want = Verdicts::Scores(vec![vec![2.0, 3.0, 2.0], vec![2.0, 1.0, 2.0]]);
        assert_eq!(got.verdicts, want);
        assert_eq!((got.judged, got.reused, got.responses_judged), (5, 1, 5));
        assert_eq!(scored.load(Ordering::Relaxed), 5);
        // Lookups see the cache as opened: until written back, a second ask judges again.
        assert_eq!(cached.judge_chunk(&chunk).unwrap().judged, 5);
        cached.write_back(&chunk, &want).unwrap();
        let path = cached.cache_path().unwrap().to_path_buf();
        assert!(
            path.starts_with(dir.join("judgments")),
            "{}",
            path.display()
        );

        let (judge, scored) = counting(lengths);
        let reopened = CachedJudge::open(judge, Some(&dir)).unwrap();
        let again = reopened.judge_chunk(&chunk).unwrap();
        assert_eq!(again.verdicts, want);
        assert_eq!((again.judged, again.reused), (0, 6));
        assert_eq!(scored.load(Ordering::Relaxed), 0);
        // Only what the judge has not seen is checked.
        reopened.check(&chunk).unwrap();

        // The cache off: nothing read, nothing written.
        let (judge, _) = counting(lengths);
        let mut off = CachedJudge::open(judge, None).unwrap();
        assert_eq!(off.cache_path(), None);
        assert_eq!(off.judge_chunk(&chunk).unwrap().judged, 5);
        off.write_back(&chunk, &want).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unusable_scores_are_errors_naming_the_judge_and_sample() {
        let m = [Message::user("q")];
        let chunk = vec![prompt("a", &m, &["x", "yy"])];
        let (short, _) = counting(|_| vec![1.0]);
        let err = CachedJudge::open(short, None)
            .unwrap()
            .judge_chunk(&chunk)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test:counting returned 1 scores for 2 responses"
        );
        let (nan, _) = counting(|items| items.iter().map(|_| f64::NAN).collect());
        let err = CachedJudge::open(nan, None)
            .unwrap()
            .judge_chunk(&chunk)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test:counting gave prompt \"a\", sample 0 the score NaN, expected a finite number"
        );
    }

    /// A pairwise judge: p = `p` for every pair in both orders; counts the groups it compares.
    struct Constant {
        p: f64,
        per_pair: bool,
        groups: Arc<AtomicUsize>,
    }

    impl PairwiseJudge for Constant {
        fn name(&self) -> String {
            "test:constant".into()
        }
        fn settings(&self) -> Value {
            json!({"p": self.p})
        }
        fn digest(&self) -> String {
            format!("constant-{}", self.p)
        }
        fn per_pair(&self) -> bool {
            self.per_pair
        }
        fn compare(&self, _: &JudgeItem<'_>, _: &JudgeItem<'_>) -> Result<PairVerdict, JudgeError> {
            Ok(PairVerdict::two_orders(self.p, self.p))
        }
        fn compare_group(&self, items: &[JudgeItem<'_>]) -> Result<Vec<PairVerdict>, JudgeError> {
            self.groups.fetch_add(1, Ordering::Relaxed);
            Ok(pairs_of(items.len())
                .iter()
                .map(|_| PairVerdict::two_orders(self.p, self.p))
                .collect())
        }
    }

    fn constant(p: f64, per_pair: bool) -> (Judge, Arc<AtomicUsize>) {
        let groups = Arc::new(AtomicUsize::new(0));
        let judge = Judge::Pairwise(Box::new(Constant {
            p,
            per_pair,
            groups: groups.clone(),
        }));
        (judge, groups)
    }

    #[test]
    fn a_pairwise_judge_reuses_a_prompt_only_when_every_pair_is_cached() {
        let dir = tmp("pairwise");
        let m = [Message::user("q")];
        let a = vec![prompt("a", &m, &["x", "y", "z"])];
        let (judge, groups) = constant(0.25, true);
        let mut cached = CachedJudge::open(judge, Some(&dir)).unwrap();
        let got = cached.judge_chunk(&a).unwrap();
        assert_eq!((got.judged, got.reused, got.responses_judged), (3, 0, 3));
        cached.write_back(&a, &got.verdicts).unwrap();
        assert_eq!(groups.load(Ordering::Relaxed), 1);

        let (judge, groups) = constant(0.25, true);
        let reopened = CachedJudge::open(judge, Some(&dir)).unwrap();
        let again = reopened.judge_chunk(&a).unwrap();
        assert_eq!(again.verdicts, got.verdicts);
        assert_eq!((again.judged, again.reused), (0, 3));
        // One new response: pairs (x, y) is cached, the prompt is judged whole all the same.
        let b = vec![prompt("a", &m, &["x", "y", "w"])];
        let partly = reopened.judge_chunk(&b).unwrap();
        assert_eq!((partly.judged, partly.reused), (3, 0));
        assert_eq!(groups.load(Ordering::Relaxed), 1);

        // Verdicts that depend on the whole group are never cached.
        let (judge, _) = constant(0.25, false);
        assert_eq!(
            CachedJudge::open(judge, Some(&dir)).unwrap().cache_path(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_probability_outside_0_1_is_an_error_naming_the_pair() {
        let m = [Message::user("q")];
        let chunk = vec![prompt("a", &m, &["x", "y"])];
        let (judge, _) = constant(1.5, true);
        let err = CachedJudge::open(judge, None)
            .unwrap()
            .judge_chunk(&chunk)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test:constant gave prompt \"a\", pair (0, 1) p = 1.5, expected a probability in [0, 1]"
        );
    }

    #[test]
    fn verdicts_of_the_other_kind_are_refused() {
        let judge = Judge::Scalar {
            judge: Box::new(LengthRule { target: 1 }),
            temperature: 1.0,
        };
        let dir = tmp("kind");
        let m = [Message::user("q")];
        let chunk = vec![prompt("a", &m, &["x", "y"])];
        let mut cached = CachedJudge::open(judge, Some(&dir)).unwrap();
        let pairs = Verdicts::Pairs(vec![vec![PairVerdict::single(0.5)]]);
        assert!(cached.write_back(&chunk, &pairs).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
