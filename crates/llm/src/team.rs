//! Helper threads that split each block product with the calling thread. A decode step is
//! ~200 small products; waking pool threads for each (a futex round trip, tens of
//! microseconds on a VM) cost more than the work, so two threads decoded no faster than one.
//! Helpers here spin between products instead, as llama.cpp's do, and sleep once no product
//! has come for `IDLE` — so they burn a core only while a generation runs (at the model's
//! lowered priority).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::kernels::{Activations, BlockMatrix, by_token};

/// How long a helper spins for the next product before it blocks.
pub const IDLE: Duration = Duration::from_millis(5);

/// Chunks per thread a product is cut into. Threads take chunks until none is left, so a
/// thread the host held back (a VM's vCPU, another process) leaves its share to the others
/// instead of making them wait; more chunks cost one shared counter increment each.
const CHUNKS_PER_THREAD: usize = 8;

/// One product (or several sharing their input), shared by the threads working on it.
#[derive(Default)]
struct Work {
    activations: Activations,
    matrices: Vec<Arc<BlockMatrix>>,
    tokens: usize,
    /// Each chunk's matrix and rows; `next` is the first chunk nobody took yet.
    chunks: Vec<(usize, Range<usize>)>,
    next: AtomicUsize,
}

impl Work {
    /// The next chunk nobody has taken, taken: its index, matrix and rows.
    fn take(&self) -> Option<(usize, usize, Range<usize>)> {
        let chunk = self.next.fetch_add(1, Ordering::Relaxed);
        let (matrix, rows) = self.chunks.get(chunk)?;
        Some((chunk, *matrix, rows.clone()))
    }
}

/// What a helper is sent: the work and its result buffers, handed back and forth so no
/// step allocates.
struct Job {
    work: Arc<Work>,
    /// The results of the chunks it did, one after another, [row][token] in each.
    buffer: Vec<f32>,
    /// The chunks it did, in order.
    done: Vec<usize>,
}

struct Helper {
    jobs: SyncSender<Job>,
    results: Receiver<(Vec<f32>, Vec<usize>)>,
    spare: (Vec<f32>, Vec<usize>),
}

fn helper_loop(jobs: Receiver<Job>, results: SyncSender<(Vec<f32>, Vec<usize>)>) {
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
            work,
            mut buffer,
            mut done,
        } = job;
        buffer.clear();
        done.clear();
        while let Some((chunk, matrix, rows)) = work.take() {
            let at = buffer.len();
            buffer.resize(at + rows.len() * work.tokens, 0.0);
            work.matrices[matrix].rows_into(
                rows,
                &work.activations,
                work.tokens,
                &mut buffer[at..],
            );
            done.push(chunk);
        }
        // The share is released before the result is sent, so the caller finds the work
        // unshared again.
        drop(work);
        if results.send((buffer, done)).is_err() {
            return;
        }
        idle_since = Instant::now();
    }
}

/// The calling thread and `helpers` spinning threads.
pub struct Team {
    helpers: Vec<Helper>,
    work: Arc<Work>,
    /// Each matrix's results, [row][token].
    by_row: Vec<Vec<f32>>,
}

impl Team {
    pub fn new(helpers: usize) -> Team {
        let helpers = (0..helpers)
            .filter_map(|i| {
                // Bounded channels of one: a job or result is never queued behind another,
                // and sending allocates nothing.
                let (jobs, job_queue) = mpsc::sync_channel(1);
                let (result_queue, results) = mpsc::sync_channel(1);
                std::thread::Builder::new()
                    .name(format!("model-{}", i + 1))
                    .spawn(move || helper_loop(job_queue, result_queue))
                    .map_err(|e| tracing::warn!("cannot start a model thread: {e}"))
                    .ok()?;
                Some(Helper {
                    jobs,
                    results,
                    spare: (Vec::new(), Vec::new()),
                })
            })
            .collect();
        Team {
            helpers,
            work: Arc::new(Work::default()),
            by_row: Vec::new(),
        }
    }

    /// Threads working on each product, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// `out[t][r] = row r · x[t]`.
    pub fn matmul(&mut self, matrix: &Arc<BlockMatrix>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.products(&[matrix], x, tokens, &mut [out]);
    }

    /// `outs[m][t][r] = row r of matrices[m] · x[t]`: products of one input (a layer's query,
    /// key and value; its gate and up) as one piece of work, the input quantized once and the
    /// threads meeting once instead of once per matrix. The matrices quantize their input
    /// alike (`BlockFormat::activations`).
    pub fn products(
        &mut self,
        matrices: &[&Arc<BlockMatrix>],
        x: &[f32],
        tokens: usize,
        outs: &mut [&mut [f32]],
    ) {
        assert_eq!(matrices.len(), outs.len());
        for (matrix, out) in matrices.iter().zip(outs.iter()) {
            assert_eq!(x.len(), tokens * matrix.cols);
            assert_eq!(out.len(), tokens * matrix.rows);
        }
        if Arc::get_mut(&mut self.work).is_none() {
            // A helper died holding a share: start from fresh buffers.
            self.work = Arc::new(Work::default());
        }
        let threads = self.threads();
        let work = Arc::get_mut(&mut self.work).expect("unshared after the check above");
        let format = matrices[0].format;
        assert!(
            matrices
                .iter()
                .all(|m| m.format.activations() == format.activations()),
            "matrices quantize one input alike"
        );
        work.activations.quantize_for(format, x);
        work.tokens = tokens;
        work.matrices.clear();
        work.matrices.extend(matrices.iter().map(|m| Arc::clone(m)));
        let total: usize = matrices.iter().map(|m| m.rows).sum();
        let chunk_rows = if threads == 1 {
            total
        } else {
            total.div_ceil(threads * CHUNKS_PER_THREAD).max(1)
        };
        work.chunks.clear();
        for (m, matrix) in matrices.iter().enumerate() {
            let mut start = 0;
            while start < matrix.rows {
                let end = (start + chunk_rows).min(matrix.rows);
                work.chunks.push((m, start..end));
                start = end;
            }
        }
        *work.next.get_mut() = 0;
        self.by_row.resize_with(matrices.len(), Vec::new);
        for (by_row, matrix) in self.by_row.iter_mut().zip(matrices) {
            by_row.resize(matrix.rows * tokens, 0.0);
        }
        let mut sent = Vec::with_capacity(self.helpers.len());
        for helper in &mut self.helpers {
            let (buffer, done) = std::mem::take(&mut helper.spare);
            let job = Job {
                work: Arc::clone(&self.work),
                buffer,
                done,
            };
            sent.push(helper.jobs.send(job).is_ok());
        }
        while let Some((_, m, rows)) = self.work.take() {
            let target = &mut self.by_row[m][rows.start * tokens..rows.end * tokens];
            self.work.matrices[m].rows_into(rows, &self.work.activations, tokens, target);
        }
        let mut lost = false;
        for (helper, sent) in self.helpers.iter_mut().zip(sent) {
            if !sent {
                continue;
            }
            let result = loop {
                match helper.results.try_recv() {
                    Ok(result) => break Some(result),
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(TryRecvError::Disconnected) => break None,
                }
            };
            let Some((buffer, done)) = result else {
                lost = true;
                continue;
            };
            let mut at = 0;
            for &chunk in &done {
                let (m, rows) = &self.work.chunks[chunk];
                let len = rows.len() * tokens;
                self.by_row[*m][rows.start * tokens..rows.end * tokens]
                    .copy_from_slice(&buffer[at..at + len]);
                at += len;
            }
            helper.spare = (buffer, done);
        }
        if lost {
            // A helper died with chunks it had taken: everything again, here.
            for (m, rows) in &self.work.chunks {
                let target = &mut self.by_row[*m][rows.start * tokens..rows.end * tokens];
                self.work.matrices[*m].rows_into(
                    rows.clone(),
                    &self.work.activations,
                    tokens,
                    target,
                );
            }
        }
        for ((by_row, matrix), out) in self.by_row.iter().zip(matrices).zip(outs.iter_mut()) {
            by_token(by_row, matrix.rows, tokens, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{BLOCK, BlockFormat};

    fn matrix(rows: usize, cols: usize, seed: usize) -> Arc<BlockMatrix> {
        let mut data = Vec::new();
        for r in 0..rows * cols / BLOCK {
            data.extend(half::f16::from_f32(0.01 + r as f32 * 1e-4).to_le_bytes());
            data.extend(half::f16::from_f32(-0.05).to_le_bytes());
            data.extend((0..16).map(|j| ((r * 7 + j * 13 + seed) % 256) as u8));
        }
        Arc::new(BlockMatrix::new(BlockFormat::Q4_1, rows, cols, data).unwrap())
    }

    #[test]
    fn products_sharing_an_input_equal_each_product_alone() {
        let cols = 96;
        // Row counts that do not divide into the chunks evenly, one smaller than a chunk.
        let matrices = [
            matrix(101, cols, 1),
            matrix(33, cols, 2),
            matrix(7, cols, 3),
        ];
        for tokens in [1, 5] {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 29) % 23) as f32 / 9.0 - 1.2)
                .collect();
            let alone: Vec<Vec<f32>> = matrices
                .iter()
                .map(|m| {
                    let mut out = vec![0f32; tokens * m.rows];
                    m.matmul(&x, tokens, &mut Activations::default(), &mut out);
                    out
                })
                .collect();
            for helpers in [0, 1, 2] {
                let mut team = Team::new(helpers);
                for _ in 0..3 {
                    let mut outs: Vec<Vec<f32>> = matrices
                        .iter()
                        .map(|m| vec![f32::NAN; tokens * m.rows])
                        .collect();
                    let mut slices: Vec<&mut [f32]> =
                        outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                    let refs: Vec<&Arc<BlockMatrix>> = matrices.iter().collect();
                    team.products(&refs, &x, tokens, &mut slices);
                    assert_eq!(outs, alone, "{helpers} helpers, {tokens} tokens");
                }
            }
        }
    }

    #[test]
    fn a_team_computes_what_one_thread_computes() {
        let (rows, cols) = (101, 64);
        let matrix = matrix(rows, cols, 0);
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
