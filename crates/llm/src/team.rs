//! Helper threads that split each block product with the calling thread. A decode step is
//! ~200 small products; waking pool threads for each (a futex round trip, tens of
//! microseconds on a VM) cost more than the work, so two threads decoded no faster than one.
//! Helpers here spin between products instead, as llama.cpp's do, and sleep once no product
//! has come for `IDLE` — so they burn a core only while a generation runs (at the model's
//! lowered priority).

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crate::kernels::{Activations, BlockMatrix, by_token};

/// How long a helper spins for the next product before it blocks.
pub const IDLE: Duration = Duration::from_millis(5);

/// One helper's share of a product.
struct Job {
    matrix: Arc<BlockMatrix>,
    activations: Arc<Activations>,
    rows: Range<usize>,
    tokens: usize,
    /// Its rows' results, [row][token]; handed back and forth so no step allocates.
    buffer: Vec<f32>,
}

struct Helper {
    jobs: Sender<Job>,
    results: Receiver<Vec<f32>>,
    spare: Vec<f32>,
}

fn helper_loop(jobs: Receiver<Job>, results: Sender<Vec<f32>>) {
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) && idle_since.elapsed() > IDLE {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    std::hint::spin_loop();
                    continue;
                }
            }
        };
        let Job {
            matrix,
            activations,
            rows,
            tokens,
            mut buffer,
        } = job;
        buffer.resize(rows.len() * tokens, 0.0);
        matrix.rows_into(rows, &activations, tokens, &mut buffer);
        // The shares are released before the result is sent, so the caller finds the
        // activations unshared again.
        drop((matrix, activations));
        if results.send(buffer).is_err() {
            return;
        }
        idle_since = Instant::now();
    }
}

/// The calling thread and `helpers` spinning threads.
pub struct Team {
    helpers: Vec<Helper>,
    activations: Arc<Activations>,
    by_row: Vec<f32>,
}

impl Team {
    pub fn new(helpers: usize) -> Team {
        let helpers = (0..helpers)
            .filter_map(|i| {
                let (jobs, job_queue) = mpsc::channel();
                let (result_queue, results) = mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("model-{}", i + 1))
                    .spawn(move || helper_loop(job_queue, result_queue))
                    .map_err(|e| tracing::warn!("cannot start a model thread: {e}"))
                    .ok()?;
                Some(Helper {
                    jobs,
                    results,
                    spare: Vec::new(),
                })
            })
            .collect();
        Team {
            helpers,
            activations: Arc::new(Activations::default()),
            by_row: Vec::new(),
        }
    }

    /// Threads working on each product, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// `out[t][r] = row r · x[t]`, rows split evenly between the caller and the helpers.
    pub fn matmul(&mut self, matrix: &Arc<BlockMatrix>, x: &[f32], tokens: usize, out: &mut [f32]) {
        assert_eq!(x.len(), tokens * matrix.cols);
        assert_eq!(out.len(), tokens * matrix.rows);
        if Arc::get_mut(&mut self.activations).is_none() {
            // A helper died holding a share: start from fresh buffers.
            self.activations = Arc::new(Activations::default());
        }
        Arc::get_mut(&mut self.activations)
            .expect("unshared after the check above")
            .quantize(x);
        let share = matrix.rows.div_ceil(self.threads());
        let range =
            |part: usize| (part * share).min(matrix.rows)..((part + 1) * share).min(matrix.rows);
        let mut sent = Vec::with_capacity(self.helpers.len());
        for (i, helper) in self.helpers.iter_mut().enumerate() {
            let job = Job {
                matrix: matrix.clone(),
                activations: self.activations.clone(),
                rows: range(i + 1),
                tokens,
                buffer: std::mem::take(&mut helper.spare),
            };
            sent.push(helper.jobs.send(job).is_ok());
        }
        self.by_row.resize(matrix.rows * tokens, 0.0);
        let own = range(0);
        let (mine, theirs) = self.by_row.split_at_mut(own.len() * tokens);
        matrix.rows_into(own, &self.activations, tokens, mine);
        let mut at = 0;
        for (i, helper) in self.helpers.iter_mut().enumerate() {
            let rows = range(i + 1);
            let target = &mut theirs[at..at + rows.len() * tokens];
            at += rows.len() * tokens;
            let result = if sent[i] {
                loop {
                    match helper.results.try_recv() {
                        Ok(result) => break Some(result),
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                        Err(TryRecvError::Disconnected) => break None,
                    }
                }
            } else {
                None
            };
            match result {
                Some(result) => {
                    target.copy_from_slice(&result);
                    helper.spare = result;
                }
                // A helper that is gone: its rows are done here.
                None => matrix.rows_into(rows, &self.activations, tokens, target),
            }
        }
        by_token(&self.by_row, matrix.rows, tokens, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{BLOCK, BlockFormat};

    #[test]
    fn a_team_computes_what_one_thread_computes() {
        let (rows, cols) = (101, 64);
        let mut data = Vec::new();
        for r in 0..rows * cols / BLOCK {
            data.extend(half::f16::from_f32(0.01 + r as f32 * 1e-4).to_le_bytes());
            data.extend(half::f16::from_f32(-0.05).to_le_bytes());
            data.extend((0..16).map(|j| ((r * 7 + j * 13) % 256) as u8));
        }
        let matrix = Arc::new(BlockMatrix::new(BlockFormat::Q4_1, rows, cols, data).unwrap());
        for tokens in [1, 3] {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 37) % 19) as f32 / 7.0 - 1.0)
                .collect();
            let mut alone = vec![0f32; tokens * rows];
            matrix.matmul(&x, tokens, &mut Activations::default(), &mut alone);
            for helpers in [1, 2] {
                let mut team = Team::new(helpers);
                let mut together = vec![0f32; tokens * rows];
                for _ in 0..3 {
                    team.matmul(&matrix, &x, tokens, &mut together);
                    assert_eq!(together, alone, "{helpers} helpers, {tokens} tokens");
                }
            }
        }
    }
}
