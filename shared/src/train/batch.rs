//! Training examples, the order they are visited in, and the loss and gradients of one
//! optimizer step.
//!
//! As in the official SPPO/RSPO code, a training example is one prompt with its selected
//! samples (`best_worst`: the chosen and the rejected one; `all`: every sample), and
//! `--batch-size` counts examples per optimizer step. The loss of a step is DESIGN.md's L over
//! the step's selected samples:
//!
//! ```text
//! L_step = mean over the step's selected samples s of (dt_s - eta (w_s - 1/2))^2
//!        + sum_k coef_k T_k        (T_k's means also over the step's selected samples;
//!                                   forward_kl over every response token of the reference
//!                                   samples of the step's prompts)
//! ```
//!
//! so with one step over every example it is exactly DESIGN.md's L. (The official code averages
//! chosen + rejected squares over pairs, which is 2 x this self-play term; DESIGN's factor 2 on
//! the regularizers keeps the paper's coefficients meaning the same.)
//!
//! Memory is bounded by the micro-batch: the step's sequences (selected samples, then reference
//! samples) are run `micro_batch_size` at a time, and each micro-batch's share of L (computed by
//! [`StepLoss`], see the `loss` module) is back-propagated at once and the gradients summed,
//! which gives exactly the gradient of one big batch. With activation checkpointing
//! ([`StepOptions::gradient_checkpointing`]) a micro-batch's forward pass keeps only each
//! layer's input, and the layers are recomputed one at a time in its backward pass.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::loss::{LossError, LossSpec, LossValues, SampleLogprobs, StepLoss};
use super::rng::{permutation, SplitMix64};
use super::selection::{Scored, Selection, SelectionError};
use crate::data::{LogprobRow, SampleRow, WinrateRow};
use crate::model::{
    logprobs_from_hidden, sequences, teacher_forced_logprobs, CheckpointedPass, ModelError,
    PromptResponse, ResponseLogprobs, Transformer,
};

/// One selected sample with everything the loss needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSample {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    pub winrate: f64,
    /// log pi_t(y), from the policy logprobs file.
    pub logp_t: f64,
    /// log pi_ref(y), from the reference logprobs file.
    pub logp_ref: f64,
}

/// A sample drawn from pi_ref (the `forward_kl` term).
#[derive(Debug, Clone, PartialEq)]
pub struct RefSample {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

/// One training example: a prompt, its selected samples and its reference samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt_id: String,
    pub samples: Vec<TrainSample>,
    /// Empty unless a `forward_kl` term is trained.
    pub reference: Vec<RefSample>,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{file}: no row for sample ({prompt_id:?}, {sample_idx}) of {samples}; the files do not belong together")]
    Missing {
        file: String,
        samples: String,
        prompt_id: String,
        sample_idx: u32,
    },
    #[error("{file}: row ({prompt_id:?}, {sample_idx}) is not a sample of {samples}; the files do not belong together")]
    Extra {
        file: String,
        samples: String,
        prompt_id: String,
        sample_idx: u32,
    },
    #[error("{file}: sample ({prompt_id:?}, {sample_idx}) has {found} token log-probs but its response has {expected} tokens")]
    TokenCount {
        file: String,
        prompt_id: String,
        sample_idx: u32,
        found: usize,
        expected: usize,
    },
    #[error(
        "{file}: sample ({prompt_id:?}, {sample_idx}): {what} is {value}, expected a finite number"
    )]
    NotFinite {
        file: String,
        prompt_id: String,
        sample_idx: u32,
        what: &'static str,
        value: f64,
    },
    #[error("{file}: no sample for prompt {prompt_id:?}; the forward_kl term needs reference samples of every training prompt")]
    NoReference { file: String, prompt_id: String },
    #[error("sample ({prompt_id:?}, {sample_idx}) has an empty prompt; a response needs at least one prompt token (BOS)")]
    EmptyPrompt { prompt_id: String, sample_idx: u32 },
    #[error("{0}: no samples")]
    Empty(String),
    #[error("{file}: {reason}")]
    Selection {
        file: String,
        reason: SelectionError,
    },
    #[error("micro-batch size must be at least 1")]
    MicroBatchSize,
    #[error("batch size must be at least 1 and epochs at least 1")]
    Plan,
    #[error("a step needs at least one example")]
    NoExamples,
    #[error("micro-batch {micro} of {micros}: {source}")]
    Loss {
        micro: usize,
        micros: usize,
        source: LossError,
    },
    #[error("parameter {0} received no gradient")]
    MissingGrad(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The rows a step is made of, each with a label (its path) for messages.
pub struct ExampleInputs<'a> {
    pub samples: (&'a str, &'a [SampleRow]),
    pub winrates: (&'a str, &'a [WinrateRow]),
    pub policy_logprobs: (&'a str, &'a [LogprobRow]),
    pub reference_logprobs: (&'a str, &'a [LogprobRow]),
    /// Samples drawn from pi_ref; required for a `forward_kl` term, ignored otherwise.
    pub reference_samples: Option<(&'a str, &'a [SampleRow])>,
}

type Key<'a> = (&'a str, u32);

/// Indexes rows by (prompt_id, sample_idx) and checks that the keys are exactly the samples'.
fn index_by_key<'a, R>(
    file: &str,
    samples_label: &str,
    samples: &[SampleRow],
    rows: &'a [R],
    key: impl Fn(&'a R) -> Key<'a>,
) -> Result<HashMap<Key<'a>, &'a R>, BatchError> {
    let map: HashMap<Key<'a>, &'a R> = rows.iter().map(|r| (key(r), r)).collect();
    for s in samples {
        if !map.contains_key(&(s.prompt_id.as_str(), s.sample_idx)) {
            return Err(BatchError::Missing {
                file: file.to_string(),
                samples: samples_label.to_string(),
                prompt_id: s.prompt_id.clone(),
                sample_idx: s.sample_idx,
            });
        }
    }
    if map.len() != samples.len() {
        let known: std::collections::HashSet<Key> = samples
            .iter()
            .map(|s| (s.prompt_id.as_str(), s.sample_idx))
            .collect();
        if let Some(r) = rows.iter().find(|r| !known.contains(&key(r))) {
            let (prompt_id, sample_idx) = key(r);
            return Err(BatchError::Extra {
                file: file.to_string(),
                samples: samples_label.to_string(),
                prompt_id: prompt_id.to_string(),
                sample_idx,
            });
        }
    }
    Ok(map)
}

fn check_logprob_row(file: &str, sample: &SampleRow, row: &LogprobRow) -> Result<(), BatchError> {
    if row.token_logprobs.len() != sample.response_token_ids.len() {
        return Err(BatchError::TokenCount {
            file: file.to_string(),
            prompt_id: sample.prompt_id.clone(),
            sample_idx: sample.sample_idx,
            found: row.token_logprobs.len(),
            expected: sample.response_token_ids.len(),
        });
    }
    if !row.logprob.is_finite() {
        return Err(BatchError::NotFinite {
            file: file.to_string(),
            prompt_id: sample.prompt_id.clone(),
            sample_idx: sample.sample_idx,
            what: "logprob",
            value: row.logprob,
        });
    }
    Ok(())
}

/// Joins samples, win rates and both log-prob files by (prompt_id, sample_idx), selects samples
/// per prompt and attaches reference samples. Examples come in the order of the prompts' first
/// appearance in the samples file.
pub fn build_examples(
    inputs: &ExampleInputs<'_>,
    selection: Selection,
) -> Result<Vec<Example>, BatchError> {
    let (samples_label, samples) = inputs.samples;
    if samples.is_empty() {
        return Err(BatchError::Empty(samples_label.to_string()));
    }
    let winrates = index_by_key(
        inputs.winrates.0,
        samples_label,
        samples,
        inputs.winrates.1,
        |r| (r.prompt_id.as_str(), r.sample_idx),
    )?;
    let policy = index_by_key(
        inputs.policy_logprobs.0,
        samples_label,
        samples,
        inputs.policy_logprobs.1,
        |r| (r.prompt_id.as_str(), r.sample_idx),
    )?;
    let reference = index_by_key(
        inputs.reference_logprobs.0,
        samples_label,
        samples,
        inputs.reference_logprobs.1,
        |r| (r.prompt_id.as_str(), r.sample_idx),
    )?;
    for s in samples {
        let key = (s.prompt_id.as_str(), s.sample_idx);
        check_logprob_row(inputs.policy_logprobs.0, s, policy[&key])?;
        check_logprob_row(inputs.reference_logprobs.0, s, reference[&key])?;
        if s.prompt_token_ids.is_empty() {
            return Err(BatchError::EmptyPrompt {
                prompt_id: s.prompt_id.clone(),
                sample_idx: s.sample_idx,
            });
        }
    }
    let scored: Vec<Scored> = samples
        .iter()
        .map(|s| Scored {
            prompt_id: &s.prompt_id,
            sample_idx: s.sample_idx,
            winrate: winrates[&(s.prompt_id.as_str(), s.sample_idx)].winrate,
        })
        .collect();
    let picked = selection.select(&scored).map_err(|reason| {
        let file = match reason {
            SelectionError::BadWinrate { .. } => inputs.winrates.0,
            _ => samples_label,
        };
        BatchError::Selection {
            file: file.to_string(),
            reason,
        }
    })?;

    let mut refs_by_prompt: HashMap<&str, Vec<RefSample>> = HashMap::new();
    if let Some((_, rows)) = inputs.reference_samples {
        for r in rows {
            if r.prompt_token_ids.is_empty() {
                return Err(BatchError::EmptyPrompt {
                    prompt_id: r.prompt_id.clone(),
                    sample_idx: r.sample_idx,
                });
            }
            refs_by_prompt
                .entry(r.prompt_id.as_str())
                .or_default()
                .push(RefSample {
                    prompt_id: r.prompt_id.clone(),
                    sample_idx: r.sample_idx,
                    prompt: r.prompt_token_ids.clone(),
                    response: r.response_token_ids.clone(),
                });
        }
    }

    let mut examples: Vec<Example> = Vec::new();
    let mut example_of: HashMap<&str, usize> = HashMap::new();
    for i in picked {
        let s = &samples[i];
        let key = (s.prompt_id.as_str(), s.sample_idx);
        let e = *example_of.entry(s.prompt_id.as_str()).or_insert_with(|| {
            examples.push(Example {
                prompt_id: s.prompt_id.clone(),
                samples: Vec::new(),
                reference: Vec::new(),
            });
            examples.len() - 1
        });
        examples[e].samples.push(TrainSample {
            prompt_id: s.prompt_id.clone(),
            sample_idx: s.sample_idx,
            prompt: s.prompt_token_ids.clone(),
            response: s.response_token_ids.clone(),
            winrate: scored[i].winrate,
            logp_t: policy[&key].logprob,
            logp_ref: reference[&key].logprob,
        });
    }
    if let Some((ref_label, _)) = inputs.reference_samples {
        for e in &mut examples {
            e.reference = refs_by_prompt.remove(e.prompt_id.as_str()).ok_or_else(|| {
                BatchError::NoReference {
                    file: ref_label.to_string(),
                    prompt_id: e.prompt_id.clone(),
                }
            })?;
        }
    }
    Ok(examples)
}

/// One optimizer step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// From 0.
    pub epoch: usize,
    /// Indices into the examples.
    pub examples: Vec<usize>,
    /// The fractional epoch reached after this step (Hugging Face Trainer's `epoch`).
    pub epoch_after: f64,
}

/// The examples of epoch `epoch` in their seeded order.
pub fn epoch_order(n_examples: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(
        "shuffle",
        &[&seed.to_le_bytes(), &(epoch as u64).to_le_bytes()],
    );
    permutation(n_examples, &mut rng)
}

/// Every optimizer step: each epoch visits every example once in a seeded order, `batch_size`
/// examples per step (the last step of an epoch may have fewer).
pub fn plan_steps(
    n_examples: usize,
    batch_size: usize,
    epochs: usize,
    seed: u64,
) -> Result<Vec<StepPlan>, BatchError> {
    if batch_size == 0 || epochs == 0 {
        return Err(BatchError::Plan);
    }
    if n_examples == 0 {
        return Err(BatchError::NoExamples);
    }
    let per_epoch = n_examples.div_ceil(batch_size);
    let mut steps = Vec::with_capacity(per_epoch * epochs);
    for epoch in 0..epochs {
        let order = epoch_order(n_examples, seed, epoch);
        for (k, chunk) in order.chunks(batch_size).enumerate() {
            steps.push(StepPlan {
                epoch,
                examples: chunk.to_vec(),
                epoch_after: epoch as f64 + (k + 1) as f64 / per_epoch as f64,
            });
        }
    }
    Ok(steps)
}

/// The loss of one step, its parts and the gradients of the trainable parameters.
pub struct StepGradients {
    /// The gradient of every trainable parameter, and nothing else.
    pub grads: GradStore,
    pub values: LossValues,
    /// Selected samples in the step (a sample selected twice counts twice).
    pub samples: usize,
    /// Response tokens run through the model: selected samples' and reference samples'.
    pub tokens: u64,
    pub micro_batches: usize,
}

enum Seq<'a> {
    Sample(&'a TrainSample),
    Reference(&'a RefSample),
}

impl Seq<'_> {
    fn pair(&self) -> PromptResponse<'_> {
        match self {
            Seq::Sample(s) => PromptResponse {
                prompt: &s.prompt,
                response: &s.response,
            },
            Seq::Reference(r) => PromptResponse {
                prompt: &r.prompt,
                response: &r.response,
            },
        }
    }
}

/// The step's sequences: every selected sample, then (with `forward_kl`) every reference sample.
fn step_sequences<'a>(
    examples: &[&'a Example],
    with_reference: bool,
) -> Result<Vec<Seq<'a>>, BatchError> {
    let mut seqs: Vec<Seq> = examples
        .iter()
        .flat_map(|e| e.samples.iter().map(Seq::Sample))
        .collect();
    if seqs.is_empty() {
        return Err(BatchError::NoExamples);
    }
    if with_reference {
        for e in examples {
            if e.reference.is_empty() {
                return Err(BatchError::NoReference {
                    file: "reference samples".into(),
                    prompt_id: e.prompt_id.clone(),
                });
            }
            seqs.extend(e.reference.iter().map(Seq::Reference));
        }
    }
    Ok(seqs)
}

/// Adds `grads`' gradients of `params` into `store`, dropping the rest: that frees the
/// gradients of frozen operands that candle's matmul backward computes anyway.
fn accumulate(
    store: &mut GradStore,
    mut grads: GradStore,
    params: &[(String, Var)],
) -> Result<(), BatchError> {
    for (_, var) in params {
        if let Some(g) = grads.remove(var.as_tensor()) {
            let sum = match store.remove(var.as_tensor()) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            store.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}

/// How a step's sequences go through the model.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// Sequences run through the model at once.
    pub micro_batch_size: usize,
    /// Activation checkpointing: the forward pass keeps only each decoder layer's input and
    /// the backward pass recomputes the layer (`model::CheckpointedPass`). The same gradients
    /// up to float rounding, for less memory and one more forward pass.
    pub gradient_checkpointing: bool,
}

/// The loss of the step made of `examples` and the gradients of `params` (the `Var`s `model`
/// was built from), accumulated over micro-batches of at most `micro_batch_size` sequences.
pub fn step_gradients(
    model: &Transformer,
    params: &[(String, Var)],
    examples: &[&Example],
    spec: &LossSpec,
    micro_batch_size: usize,
) -> Result<StepGradients, BatchError> {
    let options = StepOptions {
        micro_batch_size,
        gradient_checkpointing: false,
    };
    step_gradients_with(model, params, examples, spec, options)
}

/// [`step_gradients`] with every option: the function train-step runs for every optimizer step.
pub fn step_gradients_with(
    model: &Transformer,
    params: &[(String, Var)],
    examples: &[&Example],
    spec: &LossSpec,
    options: StepOptions,
) -> Result<StepGradients, BatchError> {
    let micro_batch_size = options.micro_batch_size;
    if micro_batch_size == 0 {
        return Err(BatchError::MicroBatchSize);
    }
    let seqs = step_sequences(examples, spec.needs_reference_samples())?;
    let samples = seqs.iter().filter(|s| matches!(s, Seq::Sample(_))).count();
    let reference_lens: Vec<usize> = seqs
        .iter()
        .filter_map(|s| match s {
            Seq::Reference(r) => Some(r.response.len()),
            Seq::Sample(_) => None,
        })
        .collect();
    let reference_tokens = spec.reference_divisor(&reference_lens);
    let mut loss =
        StepLoss::new(spec, samples, reference_tokens).map_err(|source| BatchError::Loss {
            micro: 1,
            micros: 1,
            source,
        })?;

    let micros = seqs.len().div_ceil(micro_batch_size);
    let mut grads = GradStore::default();
    let mut tokens = 0u64;
    for (m, chunk) in seqs.chunks(micro_batch_size).enumerate() {
        let pairs: Vec<PromptResponse> = chunk.iter().map(Seq::pair).collect();
        tokens += pairs.iter().map(|p| p.response.len() as u64).sum::<u64>();
        let (logprobs, pass) = if options.gradient_checkpointing {
            let (pass, hidden) = CheckpointedPass::forward(model, &sequences(&pairs))?;
            (logprobs_from_hidden(model, &pairs, &hidden)?, Some(pass))
        } else {
            (teacher_forced_logprobs(model, &pairs)?, None)
        };
        let share = micro_batch_share(&mut loss, chunk, &pairs, &logprobs, (m + 1, micros))?;
        drop(logprobs);
        // Nothing to add when nothing trainable influences this share (all coefficients 0 on a
        // reference-only micro-batch).
        let Some(share) = share.filter(Tensor::track_op) else {
            continue;
        };
        let mut head = share.backward()?;
        // The head's graph goes before the layers are recomputed.
        drop(share);
        match pass {
            None => accumulate(&mut grads, head, params)?,
            Some(pass) => {
                let below = head.remove(pass.last());
                accumulate(&mut grads, head, params)?;
                if let Some(below) = below {
                    pass.backward(model, below, |g| accumulate(&mut grads, g, params))?;
                }
            }
        }
    }
    for (name, var) in params {
        if grads.get(var.as_tensor()).is_none() {
            return Err(BatchError::MissingGrad(name.clone()));
        }
    }
    Ok(StepGradients {
        grads,
        values: loss.finish(),
        samples,
        tokens,
        micro_batches: micros,
    })
}

/// This micro-batch's share of the step's loss, from the log-probs of its sequences (`chunk`:
/// samples, then reference samples), micro-batch `micro` of `micros`; None when it has no part
/// in the loss.
fn micro_batch_share(
    loss: &mut StepLoss,
    chunk: &[Seq],
    pairs: &[PromptResponse],
    logprobs: &ResponseLogprobs,
    (micro, micros): (usize, usize),
) -> Result<Option<Tensor>, BatchError> {
    // Samples come before reference samples, so a chunk is samples then references.
    let picked: Vec<&TrainSample> = chunk
        .iter()
        .map_while(|s| match s {
            Seq::Sample(s) => Some(*s),
            Seq::Reference(_) => None,
        })
        .collect();
    let (logp_t, logp_ref, winrates): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        picked.iter().map(|s| s.logp_t).collect(),
        picked.iter().map(|s| s.logp_ref).collect(),
        picked.iter().map(|s| s.winrate).collect(),
    );
    let sums = match picked.len() {
        0 => None,
        n => Some(logprobs.sums()?.narrow(0, 0, n)?),
    };
    let samples = sums.as_ref().map(|logp_theta| SampleLogprobs {
        logp_theta,
        logp_t: &logp_t,
        logp_ref: &logp_ref,
        winrates: &winrates,
    });
    let sample_tokens: usize = pairs[..picked.len()].iter().map(|p| p.response.len()).sum();
    let ref_tokens = logprobs.tokens.dim(0)? - sample_tokens;
    let reference = match ref_tokens {
        0 => None,
        n => Some(logprobs.tokens.narrow(0, sample_tokens, n)?),
    };
    loss.add(samples.as_ref(), reference.as_ref())
        .map_err(|source| BatchError::Loss {
            micro,
            micros,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::FinishReason;

    fn sample(prompt_id: &str, sample_idx: u32, response: Vec<u32>) -> SampleRow {
        SampleRow {
            prompt_id: prompt_id.into(),
            sample_idx,
            messages: vec![],
            prompt_text: String::new(),
            response: String::new(),
            prompt_token_ids: vec![1, 5],
            response_token_ids: response,
            finish_reason: FinishReason::Eos,
            sample_logprob: 0.0,
            seed: 0,
        }
    }

    fn winrate(prompt_id: &str, sample_idx: u32, winrate: f64) -> WinrateRow {
        WinrateRow {
            prompt_id: prompt_id.into(),
            sample_idx,
            winrate,
            n_opponents: 2,
            rank: 0,
        }
    }

    fn logprob(prompt_id: &str, sample_idx: u32, logprob: f64, n: usize) -> LogprobRow {
        LogprobRow {
            prompt_id: prompt_id.into(),
            sample_idx,
            logprob,
            token_logprobs: vec![(logprob / n as f64) as f32; n],
            num_tokens: n as u32,
        }
    }

    struct Files {
        samples: Vec<SampleRow>,
        winrates: Vec<WinrateRow>,
        policy: Vec<LogprobRow>,
        reference: Vec<LogprobRow>,
        refs: Vec<SampleRow>,
    }

    fn files() -> Files {
        let samples = vec![
            sample("a", 0, vec![3, 4]),
            sample("a", 1, vec![5]),
            sample("a", 2, vec![6, 7, 8]),
            sample("b", 0, vec![9]),
            sample("b", 1, vec![10, 11]),
        ];
        let winrates = vec![
            winrate("b", 1, 0.9),
            winrate("a", 0, 0.5),
            winrate("a", 1, 0.8),
            winrate("a", 2, 0.2),
            winrate("b", 0, 0.1),
        ];
        let lp = |scale: f64| {
            samples
                .iter()
                .map(|s| {
                    logprob(
                        &s.prompt_id,
                        s.sample_idx,
                        scale * (s.sample_idx as f64 + 1.0),
                        s.response_token_ids.len(),
                    )
                })
                .collect::<Vec<_>>()
        };
        Files {
            policy: lp(-1.0),
            reference: lp(-2.0),
            samples,
            winrates,
            refs: vec![sample("b", 0, vec![12]), sample("a", 0, vec![13, 14])],
        }
    }

    fn inputs<'a>(f: &'a Files, refs: bool) -> ExampleInputs<'a> {
        ExampleInputs {
            samples: ("samples.parquet", &f.samples),
            winrates: ("winrates.parquet", &f.winrates),
            policy_logprobs: ("logprobs-policy.parquet", &f.policy),
            reference_logprobs: ("logprobs-reference.parquet", &f.reference),
            reference_samples: refs.then_some(("ref-samples.parquet", f.refs.as_slice())),
        }
    }

    #[test]
    fn examples_join_select_and_attach_references() {
        let f = files();
        let examples = build_examples(&inputs(&f, true), Selection::BestWorst).unwrap();
        assert_eq!(examples.len(), 2);
        let a = &examples[0];
        assert_eq!(a.prompt_id, "a");
        let picked: Vec<u32> = a.samples.iter().map(|s| s.sample_idx).collect();
        assert_eq!(picked, vec![1, 2]);
        assert_eq!(a.samples[0].winrate, 0.8);
        assert_eq!(a.samples[0].logp_t, -2.0);
        assert_eq!(a.samples[0].logp_ref, -4.0);
        assert_eq!(a.samples[1].response, vec![6, 7, 8]);
        assert_eq!(a.reference.len(), 1);
        assert_eq!(a.reference[0].response, vec![13, 14]);
        assert_eq!(examples[1].samples.len(), 2);
        let all = build_examples(&inputs(&f, false), Selection::All).unwrap();
        assert_eq!(all[0].samples.len(), 3);
        assert!(all[0].reference.is_empty());
    }

    #[test]
    fn files_that_do_not_belong_together_are_refused() {
        let mut f = files();
        f.winrates[0].prompt_id = "c".into();
        let err = build_examples(&inputs(&f, false), Selection::BestWorst).unwrap_err();
        assert!(
            matches!(&err, BatchError::Missing { file, sample_idx: 1, .. } if file == "winrates.parquet"),
            "{err}"
        );
        let mut f = files();
        f.policy.push(logprob("z", 0, -1.0, 1));
        let err = build_examples(&inputs(&f, false), Selection::BestWorst).unwrap_err();
        assert!(
            matches!(&err, BatchError::Extra { prompt_id, .. } if prompt_id == "z"),
            "{err}"
        );
        let mut f = files();
        f.reference[2].token_logprobs.pop();
        let err = build_examples(&inputs(&f, false), Selection::BestWorst).unwrap_err();
        assert!(matches!(err, BatchError::TokenCount { .. }), "{err}");
        let mut f = files();
        f.refs.pop();
        let err = build_examples(&inputs(&f, true), Selection::BestWorst).unwrap_err();
        assert!(
            matches!(&err, BatchError::NoReference { prompt_id, .. } if prompt_id == "a"),
            "{err}"
        );
        let mut f = files();
        f.policy[1].logprob = f64::NAN;
        let err = build_examples(&inputs(&f, false), Selection::BestWorst).unwrap_err();
        assert!(matches!(err, BatchError::NotFinite { .. }), "{err}");
        let mut f = files();
        f.samples.clear();
        assert!(matches!(
            build_examples(&inputs(&f, false), Selection::BestWorst),
            Err(BatchError::Empty(_))
        ));
    }

    #[test]
    fn plans_cover_every_example_once_per_epoch() {
        let steps = plan_steps(10, 4, 2, 7).unwrap();
        assert_eq!(steps.len(), 6);
        assert_eq!(
            steps.iter().map(|s| s.examples.len()).collect::<Vec<_>>(),
            vec![4, 4, 2, 4, 4, 2]
        );
        for epoch in 0..2 {
            let mut seen: Vec<usize> = steps
                .iter()
                .filter(|s| s.epoch == epoch)
                .flat_map(|s| s.examples.clone())
                .collect();
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert!((steps[2].epoch_after - 1.0).abs() < 1e-12);
        assert!((steps[3].epoch_after - (1.0 + 1.0 / 3.0)).abs() < 1e-12);
        // Seeded: the same seed gives the same order, another seed another, epochs differ.
        assert_eq!(steps, plan_steps(10, 4, 2, 7).unwrap());
        assert_ne!(
            steps[0].examples,
            plan_steps(10, 4, 2, 8).unwrap()[0].examples
        );
        assert_ne!(epoch_order(10, 7, 0), epoch_order(10, 7, 1));
        assert!(matches!(plan_steps(10, 0, 1, 0), Err(BatchError::Plan)));
        assert!(matches!(
            plan_steps(0, 4, 1, 0),
            Err(BatchError::NoExamples)
        ));
    }
}
