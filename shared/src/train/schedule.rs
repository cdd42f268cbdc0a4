//! Learning-rate schedule: linear warmup then linear decay to 0, as Hugging Face's
//! `get_linear_schedule_with_warmup` driven by `LambdaLR`.
//!
//! Optimizer step k (counting from 0) uses `base_lr * factor(k)` with
//!
//! ```text
//! factor(k) = k / max(1, warmup)                                  if k < warmup
//!           = max(0, (total - k) / max(1, total - warmup))        otherwise
//! ```
//!
//! so with warmup the first step has learning rate 0, exactly as the HF Trainer. From a warmup
//! ratio, `warmup = ceil(total * ratio)` as `TrainingArguments.get_warmup_steps` computes it in
//! f64 (so 100 steps at ratio 0.07 give 8 warmup steps, since 100 * 0.07 = 7.000000000000001).

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("learning rate {0} must be finite and >= 0")]
    BaseLr(f64),
    #[error("warmup ratio {0} must be in [0, 1]")]
    WarmupRatio(f64),
    #[error("the schedule needs at least one training step")]
    NoSteps,
}

/// Linear warmup then linear decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LinearSchedule {
    pub fn new(base_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<Self, ScheduleError> {
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            return Err(ScheduleError::BaseLr(base_lr));
        }
        if total_steps == 0 {
            return Err(ScheduleError::NoSteps);
        }
        Ok(Self {
            base_lr,
            warmup_steps,
            total_steps,
        })
    }

    /// `warmup_steps = ceil(total_steps * warmup_ratio)`.
    pub fn with_warmup_ratio(
        base_lr: f64,
        warmup_ratio: f64,
        total_steps: u64,
    ) -> Result<Self, ScheduleError> {
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(ScheduleError::WarmupRatio(warmup_ratio));
        }
        let warmup_steps = (total_steps as f64 * warmup_ratio).ceil() as u64;
        Self::new(base_lr, warmup_steps, total_steps)
    }

    /// The multiplier of `base_lr` at optimizer step `step` (from 0).
    pub fn factor(&self, step: u64) -> f64 {
        let (k, warmup, total) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            k / warmup.max(1.0)
        } else {
            ((total - k) / (total - warmup).max(1.0)).max(0.0)
        }
    }

    /// The learning rate of optimizer step `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        // 10 steps, 10% warmup: 1 warmup step.
        let s = LinearSchedule::with_warmup_ratio(5e-7, 0.1, 10).unwrap();
        assert_eq!(s.warmup_steps, 1);
        let lrs: Vec<f64> = (0..11).map(|k| s.lr(k) / 5e-7).collect();
        let expected = [
            0.0,
            1.0,
            8.0 / 9.0,
            7.0 / 9.0,
            6.0 / 9.0,
            5.0 / 9.0,
            4.0 / 9.0,
            3.0 / 9.0,
            2.0 / 9.0,
            1.0 / 9.0,
            0.0,
        ];
        for (got, want) in lrs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        // 100 steps, 4 warmup steps: 0, 1/4, 2/4, 3/4, then (100 - k) / 96.
        let s = LinearSchedule::new(1.0, 4, 100).unwrap();
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(2), 0.5);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(52) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(100), 0.0);
        assert_eq!(s.lr(150), 0.0);
    }

    #[test]
    fn warmup_steps_round_up_as_hf() {
        assert_eq!(
            LinearSchedule::with_warmup_ratio(1.0, 0.1, 30)
                .unwrap()
                .warmup_steps,
            3
        );
        assert_eq!(
            LinearSchedule::with_warmup_ratio(1.0, 0.07, 100)
                .unwrap()
                .warmup_steps,
            8
        );
        assert_eq!(
            LinearSchedule::with_warmup_ratio(1.0, 0.1, 64)
                .unwrap()
                .warmup_steps,
            7
        );
        assert_eq!(
            LinearSchedule::with_warmup_ratio(1.0, 0.0, 64)
                .unwrap()
                .warmup_steps,
            0
        );
        // No warmup: the first step already has the full rate; one step: factor 1 at step 0.
        let s = LinearSchedule::with_warmup_ratio(2.0, 0.0, 1).unwrap();
        assert_eq!(s.lr(0), 2.0);
        assert_eq!(s.lr(1), 0.0);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert_eq!(
            LinearSchedule::with_warmup_ratio(1.0, 1.5, 10),
            Err(ScheduleError::WarmupRatio(1.5))
        );
        assert_eq!(LinearSchedule::new(1.0, 0, 0), Err(ScheduleError::NoSteps));
        assert!(matches!(
            LinearSchedule::new(f64::NAN, 0, 10),
            Err(ScheduleError::BaseLr(_))
        ));
    }
}
